'use strict';
// The consumer's message handling against a stand-in channel: good events
// reach the hub, malformed ones are logged, counted and acknowledged.

const test = require('node:test');
const assert = require('node:assert/strict');
const { Hub } = require('../src/hub');
const { Metrics } = require('../src/metrics');
const { EventConsumer, queueArguments, backoffMs, redact } = require('../src/consumer');
const { captureLogger } = require('./support/logs');

function delivery(routingKey, body, tag, headers = {}) {
  return {
    content: Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)),
    fields: { routingKey, deliveryTag: tag },
    properties: { headers, messageId: `m${tag}`, contentType: 'application/json' },
  };
}

function setup() {
  const logs = captureLogger();
  const hub = new Hub({ log: logs.log });
  const metrics = new Metrics();
  const consumer = new EventConsumer({ url: 'amqp://127.0.0.1:1/x', queue: 'dashboard.events', bindingKeys: ['#'], prefetch: 10, hub, log: logs.log, metrics });
  const acked = [];
  const channel = { ack: (message) => acked.push(message.fields.deliveryTag), nack: () => assert.fail('nothing is requeued') };
  return { logs, hub, metrics, consumer, channel, acked };
}

test('malformed event skipped, next delivered', () => {
  const { logs, hub, metrics, consumer, channel, acked } = setup();
  const received = [];
  hub.subscribe([], (update) => received.push(update));
  const run = '1b4e28ba-2fa1-11d2-883f-0016d3cca427';
  consumer.handle(channel, delivery('run.progress', 'not json at all', 1));
  consumer.handle(channel, delivery('run.progress', [1, 2, 3], 2));
  consumer.handle(channel, delivery('run.progress', { files_done: 1 }, 3));
  consumer.handle(channel, delivery('run.progress', { run_id: run, files_done: 1, files_total: 4 }, 4));
  assert.deepEqual(acked, [1, 2, 3, 4]);
  assert.equal(consumer.malformed, 3);
  assert.equal(consumer.consumed, 1);
  assert.equal(metrics.get('aiswa_dashboard_events_total', { outcome: 'malformed' }), 3);
  assert.equal(received.length, 1);
  assert.equal(received[0].run.run_id, run);
  const skipped = logs.find('malformed event skipped');
  assert.deepEqual(skipped.map((line) => line.message_id), ['m1', 'm2', 'm3']);
  assert.match(skipped[0].reason, /body is not JSON/);
  assert.match(skipped[2].reason, /run_id must be a non-empty string/);
  assert.equal(skipped[0].level, 'WARNING');
});

test('traceparent header without a tracer', () => {
  const { consumer, channel, acked } = setup();
  // Without a tracer provider the API is a no-op; the handler must still work.
  consumer.handle(channel, delivery('breaker.state_changed', { service: 'vision', upstream: 'projects', to: 'open' }, 7, {
    traceparent: Buffer.from('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'),
  }));
  assert.deepEqual(acked, [7]);
});

test('cancelled consumer reconnects', () => {
  const { logs, consumer, channel } = setup();
  let closed = false;
  consumer.connection = { close: async () => { closed = true; } };
  consumer.handle(channel, null);
  assert.ok(closed);
  assert.equal(logs.find('consumer cancelled by RabbitMQ; reconnecting').length, 1);
});

test('queue arguments match the Python runtime', () => {
  assert.deepEqual(queueArguments('dashboard.events'), {
    'x-queue-type': 'quorum',
    'x-dead-letter-exchange': 'aiswa.dlx',
    'x-dead-letter-routing-key': 'dashboard.events',
    'x-delivery-limit': 10,
  });
});

test('backoff is jittered and capped', () => {
  for (let attempt = 1; attempt < 20; attempt += 1) {
    const ceiling = Math.min(30000, 500 * 2 ** (attempt - 1));
    const delay = backoffMs(attempt);
    assert.ok(delay >= ceiling / 2, `attempt ${attempt}: ${delay} ms is below half of ${ceiling}`);
    assert.ok(delay <= ceiling, `attempt ${attempt}: ${delay} ms is above ${ceiling}`);
  }
});

test('redact hides the AMQP password', () => {
  assert.equal(redact('amqp://dashboard:s3cret@127.0.0.1:55672/aiswa'), 'amqp://dashboard:***@127.0.0.1:55672/aiswa');
});
