'use strict';
// The queue-depth poller's outbound calls: deadline, retries and breaker.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Hub } = require('../src/hub');
const { Metrics } = require('../src/metrics');
const { QueueDepthPoller } = require('../src/queue_depth');
const { captureLogger } = require('./support/logs');

// A stand-in amqplib connection whose checkQueue returns what `behave(queue)` returns.
function connection(behave) {
  const calls = [];
  return {
    calls,
    createChannel: async () => ({
      on: () => {},
      checkQueue: (queue) => {
        calls.push(queue);
        return behave(queue);
      },
    }),
  };
}

function poller(options = {}) {
  const logs = captureLogger();
  const hub = new Hub({ log: logs.log });
  const metrics = new Metrics();
  const updates = [];
  hub.subscribe([], (update) => updates.push(update));
  const instance = new QueueDepthPoller({
    queues: ['reflector.analyze', 'gone'], intervalMs: 1000, hub, log: logs.log, metrics, timeoutMs: 50, attempts: 3,
    breaker: { resetTimeout: 60000 }, ...options,
  });
  return { instance, updates, logs, metrics };
}

test('depths published, missing queue ignored', async () => {
  const { instance, updates } = poller();
  const conn = connection(async (queue) => {
    if (queue === 'gone') throw Object.assign(new Error('NOT_FOUND'), { code: 404 });
    return { queue, messageCount: 7, consumerCount: 1 };
  });
  instance.useConnection(conn);
  await instance.poll();
  await instance.poll();
  assert.deepEqual(updates.map((u) => [u.metric_type, u.labels.queue, u.value]), [
    ['queue_depth', 'reflector.analyze', 7], ['queue_depth', 'reflector.analyze', 7],
  ]);
  assert.deepEqual(conn.calls, ['reflector.analyze', 'gone', 'reflector.analyze', 'gone']);
  assert.equal(instance.breakerState, 'closed');
  instance.stop();
});

test('hung check times out, breaker opens', async () => {
  const { instance, updates, logs, metrics } = poller({ queues: ['reflector.analyze'] });
  const conn = connection(() => new Promise(() => {}));
  instance.useConnection(conn);
  await instance.poll();
  const retries = logs.find('retrying queue depth');
  assert.ok(retries.length >= 1);
  assert.match(retries[0].error, /timed out after 50 ?ms/i);
  await instance.poll();
  assert.equal(instance.breakerState, 'open');
  const callsWhenOpen = conn.calls.length;
  await instance.poll();
  assert.equal(conn.calls.length, callsWhenOpen, 'an open breaker makes no call');
  const breaker = updates.find((u) => u.metric_type === 'breaker_state');
  assert.deepEqual([breaker.service, breaker.labels.upstream, breaker.labels.state, breaker.value], ['dashboard', 'rabbitmq', 'open', 2]);
  assert.equal(metrics.get('aiswa_breaker_state', { upstream: 'rabbitmq' }), 2);
  assert.equal(logs.find('circuit breaker state changed')[0].to, 'open');
  instance.stop();
});

test('no connection fails at once', async () => {
  const { instance, logs } = poller({ queues: ['q'], attempts: 1 });
  await instance.poll();
  assert.match(logs.find('queue depth not read')[0].error, /not connected to RabbitMQ/);
  instance.stop();
});
