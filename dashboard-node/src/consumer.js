'use strict';
// Consumes the aiswa.events topic exchange through the dashboard's own
// durable queue and publishes every event to the hub.
//
// Each message is acknowledged after its updates reached the hub. A malformed
// message is logged, counted and acknowledged too: it is skipped, never
// requeued (it would fail again) and never fatal. A lost connection is
// retried with jittered exponential backoff until stop(). With short-lived
// credentials (amqp_credentials.js), switchCredentials() consumes on a
// connection with the new ones before it closes the old connection.

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

/** Reject with "`what` timed out after `ms` ms" unless `promise` settles first. */
function withDeadline(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

function redact(url) {
  return url.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@');
}

class EventConsumer {
  /**
   * `url` is the broker's amqp:// URL. Without `credentials` it carries the
   * user and password. With `credentials` (see amqp_credentials.js), every
   * connection uses the {id, username, password} that
   * credentials.forConnection() returns, a lost connection calls
   * credentials.replaceIfGone(error), and switchCredentials() moves to new ones.
   */
  constructor({ url, credentials = null, queue, bindingKeys, prefetch, hub, log, metrics = null, service = 'dashboard', connectTimeoutMs = 10000 }) {
    this.url = url;
    this.credentials = credentials;
    this.queue = queue;
    this.bindingKeys = bindingKeys;
    this.prefetch = prefetch;
    this.hub = hub;
    this.log = log;
    this.metrics = metrics;
    this.service = service;
    this.connectTimeoutMs = connectTimeoutMs;
    // The consuming connection: {connection, channel, consumerTag, credentialsId, user, ended}.
    this.session = null;
    this.connection = null;
    this.channel = null;
    this.connected = false;
    this.stopping = false;
    this.malformed = 0;
    this.consumed = 0;
    this.listeners = new Set();
    // Connecting and switching credentials run one at a time.
    this.lock = Promise.resolve();
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
        await this.exclusive(() => this.connectUnlessConnected());
        attempt = 0;
        await this.untilLost();
      } catch (error) {
        if (this.stopping) break;
        attempt += 1;
        let delay = backoffMs(attempt);
        // The user may have been deleted with its lease: new credentials are tried at once.
        if (this.credentials && (await this.credentials.replaceIfGone(error))) delay = 0;
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

  // A credential switch may have connected while run() waited for the lock.
  async connectUnlessConnected() {
    if (this.session || this.stopping) return;
    const credentials = this.credentials ? await this.credentials.forConnection() : null;
    if (this.stopping) return;
    const session = await this.open(credentials);
    if (this.stopping) {
      await session.connection.close().catch(() => {});
      return;
    }
    this.activate(session);
  }

  // Resolves when stopping; throws the reason when the consuming connection
  // is lost. A connection closed by switchCredentials() is not lost: the
  // wait continues on its successor.
  async untilLost() {
    for (;;) {
      const session = this.session;
      if (this.stopping) return;
      if (!session) throw new Error('connection closed');
      const error = await session.ended;
      if (this.stopping) return;
      if (this.session && this.session !== session) continue;
      throw error;
    }
  }

  /**
   * Move to `credentials` ({id, username, password}) without losing events:
   * open a connection with them and start consuming, then cancel the old
   * consumer and close the old connection. Unacknowledged messages of the
   * old channel go back to the queue. Returns at once when the consumer
   * uses these credentials already or is not connected, because every
   * reconnection gets the current credentials anyway.
   */
  async switchCredentials(credentials) {
    // Checked before taking the lock too, so that a renewal does not wait for a reconnection.
    if (!this.session || this.session.credentialsId === credentials.id) return;
    await this.exclusive(async () => {
      const old = this.session;
      if (this.stopping || !old || old.credentialsId === credentials.id) return;
      const next = await this.open(credentials);
      if (this.stopping) {
        await next.connection.close().catch(() => {});
        return;
      }
      this.activate(next);
      await this.retire(old);
      this.log.info({ user: old.user }, 'closed the RabbitMQ connection of the replaced credentials');
    });
  }

  // Opens a connection and a consuming channel; resolves to the session.
  async open(credentials) {
    const options = { timeout: this.connectTimeoutMs, clientProperties: { connection_name: this.service } };
    // Passed apart from the URL, so the password never appears in a URL.
    if (credentials) options.credentials = amqp.credentials.plain(credentials.username, credentials.password);
    const connection = await amqp.connect(this.url, options);
    const session = {
      connection,
      channel: null,
      consumerTag: null,
      credentialsId: credentials?.id ?? null,
      user: credentials?.username ?? null,
    };
    session.ended = new Promise((resolve) => {
      connection.on('error', (error) => this.log.warn({ error: error.message, user: session.user }, 'RabbitMQ connection error'));
      connection.on('close', (error) => {
        if (this.session === session) this.deactivate();
        resolve(new Error(`connection closed${error ? `: ${error.message}` : ''}`));
      });
    });
    try {
      const channel = await connection.createChannel();
      channel.on('error', (error) => this.log.warn({ error: error.message }, 'RabbitMQ channel error'));
      // A consumer channel that closes alone would stop delivery silently: reconnect.
      channel.on('close', () => {
        if (!this.stopping && this.session === session) connection.close().catch(() => {});
      });
      // Passive: the launcher declares the exchanges; this user may not create them.
      await channel.checkExchange(EXCHANGE);
      await channel.assertQueue(this.queue, { durable: true, arguments: queueArguments(this.queue) });
      for (const key of this.bindingKeys) await channel.bindQueue(this.queue, EXCHANGE, key);
      await channel.prefetch(this.prefetch);
      const { consumerTag } = await channel.consume(this.queue, (message) => this.handle(channel, message), { noAck: false });
      session.channel = channel;
      session.consumerTag = consumerTag;
    } catch (error) {
      await connection.close().catch(() => {});
      throw error;
    }
    return session;
  }

  activate(session) {
    this.session = session;
    this.connection = session.connection;
    this.channel = session.channel;
    this.connected = true;
    this.metrics?.gauge('aiswa_dashboard_amqp_connected', {}, 1);
    this.log.info(
      { queue: this.queue, binding_keys: this.bindingKeys, prefetch: this.prefetch, url: redact(this.url), user: session.user },
      'consuming events',
    );
    for (const listener of this.listeners) {
      try {
        listener(session.connection);
      } catch (error) {
        this.log.error({ err: error }, 'connect listener failed');
      }
    }
  }

  deactivate() {
    this.session = null;
    this.connection = null;
    this.channel = null;
    this.connected = false;
    this.metrics?.gauge('aiswa_dashboard_amqp_connected', {}, 0);
  }

  // Cancels the old consumer before closing its connection. handle()
  // acknowledges each delivery as it arrives, so once RabbitMQ confirms the
  // cancel, no delivery of the old channel is left to be requeued.
  async retire(session) {
    try {
      await withDeadline(session.channel.cancel(session.consumerTag), this.connectTimeoutMs, 'cancelling the old consumer');
    } catch (error) {
      this.log.warn({ error: error.message, user: session.user }, 'cancelling the old consumer failed; closing its connection');
    }
    await session.connection.close().catch(() => {});
  }

  exclusive(task) {
    const result = this.lock.then(task);
    this.lock = result.catch(() => {});
    return result;
  }

  /** Publish one delivery's updates to the hub and acknowledge it. */
  handle(channel, message) {
    if (message === null) {
      // The broker cancelled the consumer (the queue was deleted): reconnect,
      // unless the channel belongs to a connection that is being replaced.
      if (this.session && this.session.channel !== channel) return;
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
    // A connection being opened is closed by its opener, which checks `stopping` after opening.
    await this.lock;
    if (this.connection) await this.connection.close().catch(() => {});
    this.connected = false;
    await this.running;
  }
}

module.exports = { EventConsumer, queueArguments, backoffMs, withDeadline, redact, EXCHANGE };
