'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { Hub, wireJson, rfc3339 } = require('../src/hub');
const { captureLogger } = require('./support/logs');

function update(metricType, key = null, value = 1) {
  return { metric_type: metricType, value, ts: 1700000000.123456, service: 's', labels: {}, run: null, event: 'e', key };
}

test('filter delivers only requested types', () => {
  const hub = new Hub();
  const breakers = [];
  const runsAndQueues = [];
  const everything = [];
  hub.subscribe(['breaker_state'], (u) => breakers.push(u.metric_type));
  hub.subscribe(['run_progress', 'queue_depth', 'run_progress'], (u) => runsAndQueues.push(u.metric_type));
  hub.subscribe([], (u) => everything.push(u.metric_type));
  for (const type of ['run_progress', 'breaker_state', 'queue_depth', 'request_rate', 'run_progress', 'event']) hub.publish(update(type));
  assert.deepEqual(breakers, ['breaker_state']);
  assert.deepEqual(runsAndQueues, ['run_progress', 'queue_depth', 'run_progress']);
  assert.deepEqual(everything, ['run_progress', 'breaker_state', 'queue_depth', 'request_rate', 'run_progress', 'event']);
});

test('sequence numbers and unsubscribe', () => {
  const hub = new Hub();
  const seen = [];
  const unsubscribe = hub.subscribe(['queue_depth'], (u) => seen.push(u.sequence));
  hub.publish(update('queue_depth'));
  hub.publish(update('run_progress'));
  hub.publish(update('queue_depth'));
  unsubscribe();
  hub.publish(update('queue_depth'));
  assert.deepEqual(seen, [1, 3]);
  assert.equal(hub.subscribers, 0);
});

test('throwing subscriber does not stop others', () => {
  const { log, find } = captureLogger();
  const hub = new Hub({ log });
  const seen = [];
  hub.subscribe([], () => {
    throw new Error('boom');
  });
  hub.subscribe([], (u) => seen.push(u.sequence));
  hub.publish(update('event'));
  assert.deepEqual(seen, [1]);
  assert.equal(find('subscriber failed; skipped').length, 1);
});

test('snapshot keeps latest per series', () => {
  const hub = new Hub({ snapshotKeys: 3, recentEvents: 2 });
  hub.publish(update('queue_depth', 'queue:a', 1));
  hub.publish(update('queue_depth', 'queue:b', 2));
  hub.publish(update('queue_depth', 'queue:a', 3));
  hub.publish(update('event'));
  hub.publish(update('event'));
  hub.publish(update('event'));
  hub.publish(update('breaker_state', 'breaker:x', 2));
  hub.publish(update('run_progress', 'run:r', 0.5));
  const snapshot = hub.snapshot();
  assert.deepEqual(snapshot.map((u) => u.sequence), [3, 5, 6, 7, 8]);
  assert.deepEqual(hub.snapshot(['queue_depth']).map((u) => u.value), [3]);
});

test('WebSocket encoding made once', () => {
  const hub = new Hub();
  const published = hub.publish(update('event'));
  assert.equal(wireJson(published), wireJson(published));
  const message = JSON.parse(wireJson(published));
  assert.equal(message.type, 'update');
  assert.equal(message.sequence, 1);
  assert.equal(message.timestamp, '2023-11-14T22:13:20.123456Z');
  assert.equal(rfc3339(1700000000), '2023-11-14T22:13:20.000000Z');
});

function runUpdate(event, state, filesDone = 0, filesTotal = 0) {
  const run = { run_id: 'r1', project_id: 'p1', state, files_done: filesDone, files_total: filesTotal, error: '' };
  return { ...update('run_progress', 'run:r1', state === 'RUN_STATE_COMPLETED' ? 1 : 0), run, event };
}

test('snapshot ignores late run.queued', () => {
  const hub = new Hub();
  const delivered = [];
  hub.subscribe(['run_progress'], (u) => delivered.push(u.event));
  hub.publish(runUpdate('run.started', 'RUN_STATE_RUNNING'));
  hub.publish(runUpdate('run.progress', 'RUN_STATE_RUNNING', 5, 5));
  hub.publish(runUpdate('analysis.completed', 'RUN_STATE_COMPLETED', 5, 5));
  hub.publish(runUpdate('run.queued', 'RUN_STATE_QUEUED'));
  const [kept] = hub.snapshot(['run_progress']);
  assert.equal(kept.event, 'analysis.completed');
  assert.equal(kept.run.state, 'RUN_STATE_COMPLETED');
  assert.deepEqual(delivered, ['run.started', 'run.progress', 'analysis.completed', 'run.queued']);
});

test('snapshot keeps highest files_done', () => {
  const hub = new Hub();
  hub.publish(runUpdate('run.queued', 'RUN_STATE_QUEUED'));
  hub.publish(runUpdate('run.progress', 'RUN_STATE_RUNNING', 4, 9));
  hub.publish(runUpdate('run.started', 'RUN_STATE_RUNNING'));
  assert.equal(hub.snapshot()[0].run.files_done, 4);
  hub.publish(runUpdate('run.progress', 'RUN_STATE_RUNNING', 9, 9));
  assert.equal(hub.snapshot()[0].run.files_done, 9);
});

test('first final run state wins', () => {
  const hub = new Hub();
  hub.publish(runUpdate('analysis.failed', 'RUN_STATE_FAILED'));
  hub.publish(runUpdate('analysis.completed', 'RUN_STATE_COMPLETED', 3, 3));
  assert.equal(hub.snapshot()[0].run.state, 'RUN_STATE_FAILED');
});
