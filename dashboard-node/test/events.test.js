'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { decodeEvent, MalformedEvent, METRIC_TYPES } = require('../src/events');

const RUN = '1b4e28ba-2fa1-11d2-883f-0016d3cca427';
const PROJECT = '6fa459ea-ee8a-3ca4-894e-db77e160355e';

function decode(key, body, properties, receivedAt = 1700000000.5) {
  return decodeEvent(key, Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)), properties, receivedAt);
}

test('run events become run_progress', () => {
  const [queued] = decode('run.queued', { run_id: RUN, project_id: PROJECT, state: 'queued' });
  assert.equal(queued.metric_type, 'run_progress');
  assert.equal(queued.run.state, 'RUN_STATE_QUEUED');
  assert.equal(queued.value, 0);
  assert.equal(queued.key, `run:${RUN}`);

  const [progress] = decode('run.progress', { run_id: RUN, project_id: PROJECT, files_done: 25, files_total: 100 });
  assert.equal(progress.run.state, 'RUN_STATE_RUNNING');
  assert.equal(progress.value, 0.25);
  assert.deepEqual([progress.run.files_done, progress.run.files_total], [25, 100]);

  const [done] = decode('analysis.completed', { run_id: RUN, project_id: PROJECT, summary: { files: 7, sloc: 120, mean_cyclomatic_complexity: 2.5 } });
  assert.equal(done.run.state, 'RUN_STATE_COMPLETED');
  assert.equal(done.value, 1);
  assert.equal(done.run.files_total, 7);
  assert.equal(done.labels.sloc, '120');

  const [failed] = decode('analysis.failed', { run_id: RUN, project_id: PROJECT, error: 'poison message: bad archive' });
  assert.equal(failed.run.state, 'RUN_STATE_FAILED');
  assert.equal(failed.run.error, 'poison message: bad archive');
});

test('other known events map to types', () => {
  const [breaker] = decode('breaker.state_changed', { service: 'vision', upstream: 'reflector', from: 'closed', to: 'open' });
  assert.equal(breaker.metric_type, 'breaker_state');
  assert.equal(breaker.value, 2);
  assert.equal(breaker.service, 'vision');
  assert.deepEqual(breaker.labels, { upstream: 'reflector', state: 'open', from: 'closed' });

  const metrics = decode('metrics.service', {
    service: 'projects', window_seconds: 5, requests: 50, errors: 5, latency_p50_ms: 3.5, latency_p99_ms: 40, authz_denials: 2,
  });
  assert.deepEqual(
    Object.fromEntries(metrics.map((update) => [update.metric_type, update.value])),
    { request_rate: 10, error_rate: 1, latency_p50_ms: 3.5, latency_p99_ms: 40, authz_denials: 2 },
  );
  assert.ok(metrics.every((update) => update.service === 'projects'));

  const [depth] = decode('queue.depth', { queue: 'reflector.analyze', messages: 12, consumers: 2 });
  assert.equal(depth.metric_type, 'queue_depth');
  assert.equal(depth.value, 12);
  assert.deepEqual(depth.labels, { queue: 'reflector.analyze', consumers: '2' });

  const [denied] = decode('authz.denied', {
    service: 'projects', caller: 'intruder.aiswa.serviceaccount.identity.linkerd.cluster.local',
    method: '/aiswa.projects.v1.ProjectsService/ReadArchive', reason: 'not a client', reason_kind: 'policy',
  });
  assert.equal(denied.metric_type, 'authz_denied');
  assert.equal(denied.key, null);
  assert.equal(denied.labels.reason, 'not a client');
});

test('unknown routing key becomes event', () => {
  const [event] = decode('roadmap.archived', { run_id: RUN, count: 3, nested: { ignored: true } });
  assert.equal(event.metric_type, 'event');
  assert.equal(event.event, 'roadmap.archived');
  assert.deepEqual(event.labels, { run_id: RUN, count: '3' });
});

test('timestamp from body, AMQP or receipt', () => {
  assert.equal(decode('run.started', { run_id: RUN, timestamp: 1700000001.25 })[0].ts, 1700000001.25);
  assert.equal(decode('run.started', { run_id: RUN, timestamp: '2023-11-14T22:13:21.500Z' })[0].ts, 1700000001.5);
  assert.equal(decode('run.started', { run_id: RUN }, { timestamp: 1700000002 })[0].ts, 1700000002);
  assert.equal(decode('run.started', { run_id: RUN })[0].ts, 1700000000.5);
});

test('malformed events throw MalformedEvent', () => {
  const cases = [
    ['run.progress', 'not json{', /not JSON/],
    ['run.progress', '[1, 2]', /JSON an array, not an object/],
    ['run.progress', 'null', /JSON null/],
    ['run.progress', { project_id: PROJECT }, /run_id must be a non-empty string/],
    ['run.progress', { run_id: RUN, files_done: -1 }, /files_done must be a whole number/],
    ['run.progress', { run_id: RUN, files_done: 9, files_total: 3 }, /exceeds files_total/],
    ['breaker.state_changed', { service: 'vision', upstream: 'projects', to: 'ajar' }, /to must be one of closed, half-open, open/],
    ['metrics.service', { service: 'users', window_seconds: 0, requests: 1, errors: 0 }, /window_seconds must be greater than 0/],
    ['metrics.service', { service: 'users', window_seconds: 5, requests: 1, errors: 2 }, /errors 2 exceeds requests 1/],
    ['queue.depth', { queue: 'q', messages: 'many' }, /messages must be a whole number/],
    ['run.started', { run_id: RUN, timestamp: 'yesterday' }, /timestamp must be Unix seconds/],
    ['anything', Buffer.alloc(1024 * 1024 + 1, 32).toString(), /limit is/],
  ];
  for (const [key, body, pattern] of cases) {
    assert.throws(() => decode(key, body), (error) => error instanceof MalformedEvent && pattern.test(error.message), `${key} ${JSON.stringify(body).slice(0, 60)}`);
  }
});

test('METRIC_TYPES lists every produced type', () => {
  const produced = new Set([
    ...decode('run.started', { run_id: RUN }),
    ...decode('roadmap.ready', { run_id: RUN, project_id: PROJECT, items: 4 }),
    ...decode('breaker.state_changed', { service: 's', upstream: 'u', to: 'closed' }),
    ...decode('metrics.service', { service: 's', window_seconds: 1, requests: 1, errors: 0, latency_p50_ms: 1, latency_p99_ms: 1, authz_denials: 0 }),
    ...decode('queue.depth', { queue: 'q', messages: 0 }),
    ...decode('authz.denied', { service: 's', method: '/a.B/C', reason: 'r' }),
    ...decode('other', {}),
  ].map((update) => update.metric_type));
  assert.deepEqual([...produced].sort(), [...METRIC_TYPES].sort());
});
