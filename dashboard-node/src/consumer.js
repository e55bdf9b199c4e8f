'use strict';
// Consumes the aiswa.events topic exchange through the dashboard's own
// durable queue and publishes every event to the hub.
//
// Each message is acknowledged after its updates reached the hub. A malformed
// message is logged, counted and acknowledged too: it is skipped, never
// requeued (it would fail again) and never fatal. A lost connection is
// retried with jittered exponential backoff until stop().

const amqp = require('amqplib');
const { context, propagation, trace, SpanKind, SpanStatusCode, ROOT_CONTEXT } = require('@opentelemetry/api');
const { decodeEvent, MalformedEvent } = require('./events');

const EXCHANGE = 'aiswa.events';
const DEAD_LETTER_EXCHANGE = 'aiswa.dlx';
const tracer = trace.getTracer('aiswa.dashboard.amqp');

/**
 * Return the arguments that aiswa_runtime._amqp.queue_arguments() gives a
 * quorum queue. With the same arguments the queue can also be listed in
 * mesh/topology.yaml, because RabbitMQ rejects a second declaration of a
 * queue with other arguments.
 */
function queueArguments(queue) {
  return {
    'x-queue-type': 'quorum',
    'x-dead-letter-exchange': DEAD_LETTER_EXCHANGE,
    'x-dead-letter-routing-key': queue,
    'x-delivery-limit': 10,
  };
}

function headerGetter() {
  return {
    keys: (carrier) => Object.keys(carrier),
    get: (carrier, key) => {
      const value = carrier[key];
      if (value === undefined) return undefined;
      return Buffer.isBuffer(value) ? value.toString() : String(value);
    },
  };
}

/** Jittered exponential backoff in milliseconds for retry `attempt` (1, 2, ...). */
function backoffMs(attempt, baseMs = 500, maxMs = 30000) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

function redact(url) {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}

class EventConsumer {
  constructor({ url, queue, bindingKeys, prefetch, hub, log, metrics = null, service = 'dashboard', connectTimeoutMs = 10000 }) {
    this.url = url;
    this.queue = queue;
    this.bindingKeys = bindingKeys;
    this.prefetch = prefetch;
    this.hub = hub;
    this.log = log;
    this.metrics = metrics;
    this.service = service;
    this.connectTimeoutMs = connectTimeoutMs;
    this.connection = null;
    this.channel = null;
    this.connected = false;
    this.stopping = false;
    this.malformed = 0;
    this.consumed = 0;
    this.listeners = new Set();
  }

  /** Call `listener(connection)` after every (re)connection, e.g. to open channels. */
  onConnect(listener) {
    this.listeners.add(listener);
  }

  /** Connect in the background; resolves once the first connection consumes. */
  start() {
    this.running = this.run();
    return new Promise((resolve) => {
      this.onConnect(function first() {
        resolve();
      });
    });
  }

  async run() {
    let attempt = 0;
    while (!this.stopping) {
      try {
        const closed = await this.connect();
        attempt = 0;
        await closed;
      } catch (error) {
        if (this.stopping) break;
        attempt += 1;
        const delay = backoffMs(attempt);
        this.log.warn(
          { error: error.message, attempt, retry_in_ms: Math.round(delay), url: redact(this.url) },
          'RabbitMQ not reachable; retrying',
        );
        await new Promise((resolve) => {
          this.retryTimer = setTimeout(resolve, delay);
          this.wake = resolve;
        });
      }
    }
  }

  // Resolves to a promise that settles when the connection is lost.
  async connect() {
    const connection = await amqp.connect(this.url, {
      timeout: this.connectTimeoutMs,
      clientProperties: { connection_name: this.service },
    });
    this.connection = connection;
    const closed = new Promise((resolve, reject) => {
      connection.on('error', (error) => this.log.warn({ error: error.message }, 'RabbitMQ connection error'));
      connection.on('close', (error) => {
        this.connected = false;
        this.channel = null;
        this.metrics?.gauge('aiswa_dashboard_amqp_connected', {}, 0);
        if (this.stopping) resolve();
        else reject(new Error(`connection closed${error ? `: ${error.message}` : ''}`));
      });
    });
    closed.catch(() => {});
    try {
      const channel = await connection.createChannel();
      channel.on('error', (error) => this.log.warn({ error: error.message }, 'RabbitMQ channel error'));
      // A consumer channel that closes alone would stop delivery silently: reconnect.
      channel.on('close', () => {
        if (!this.stopping && this.connection === connection) connection.close().catch(() => {});
      });
      // Passive: the launcher declares the exchanges; this user may not create them.
      await channel.checkExchange(EXCHANGE);
      await channel.assertQueue(this.queue, { durable: true, arguments: queueArguments(this.queue) });
      for (const key of this.bindingKeys) await channel.bindQueue(this.queue, EXCHANGE, key);
      await channel.prefetch(this.prefetch);
      await channel.consume(this.queue, (message) => this.handle(channel, message), { noAck: false });
      this.channel = channel;
    } catch (error) {
      await connection.close().catch(() => {});
      throw error;
    }
    this.connected = true;
    this.metrics?.gauge('aiswa_dashboard_amqp_connected', {}, 1);
    this.log.info(
      { queue: this.queue, binding_keys: this.bindingKeys, prefetch: this.prefetch, url: redact(this.url) },
      'consuming events',
    );
    for (const listener of this.listeners) {
      try {
        listener(connection);
      } catch (error) {
        this.log.error({ err: error }, 'connect listener failed');
      }
    }
    return closed;
  }

  /** Publish one delivery's updates to the hub and acknowledge it. */
  handle(channel, message) {
    if (message === null) {
      // The broker cancelled the consumer (the queue was deleted): reconnect.
      this.log.warn({ queue: this.queue }, 'consumer cancelled by RabbitMQ; reconnecting');
      this.connection?.close().catch(() => {});
      return;
    }
    const routingKey = message.fields.routingKey;
    const headers = message.properties.headers || {};
    const parent = propagation.extract(ROOT_CONTEXT, headers, headerGetter());
    const span = tracer.startSpan(
      `${this.queue} process`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          'messaging.system': 'rabbitmq',
          'messaging.source.name': this.queue,
          'messaging.rabbitmq.destination.routing_key': routingKey,
          'messaging.message.id': message.properties.messageId || '',
        },
      },
      parent,
    );
    context.with(trace.setSpan(parent, span), () => {
      try {
        const updates = decodeEvent(routingKey, message.content, message.properties);
        for (const update of updates) {
          this.hub.publish(update);
          this.metrics?.inc('aiswa_dashboard_updates_total', { metric_type: update.metric_type });
        }
        this.consumed += 1;
        this.metrics?.inc('aiswa_dashboard_events_total', { outcome: 'published' });
      } catch (error) {
        span.setStatus({ code: SpanStatusCode.ERROR, message: error.message });
        const fields = { routing_key: routingKey, message_id: message.properties.messageId || '' };
        if (error instanceof MalformedEvent) {
          this.malformed += 1;
          this.metrics?.inc('aiswa_dashboard_events_total', { outcome: 'malformed' });
          this.log.warn({ ...fields, reason: error.reason }, 'malformed event skipped');
        } else {
          // A bug of ours: the event would fail again, so it is skipped too.
          this.metrics?.inc('aiswa_dashboard_events_total', { outcome: 'failed' });
          this.log.error({ ...fields, err: error }, 'event handling failed; event skipped');
        }
      } finally {
        channel.ack(message);
        span.end();
      }
    });
  }

  /** Stop consuming; unacknowledged messages go back to the queue. */
  async stop() {
    this.stopping = true;
    clearTimeout(this.retryTimer);
    this.wake?.();
    if (this.connection) await this.connection.close().catch(() => {});
    this.connected = false;
    await this.running;
  }
}

module.exports = { EventConsumer, queueArguments, backoffMs, redact, EXCHANGE };
