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
