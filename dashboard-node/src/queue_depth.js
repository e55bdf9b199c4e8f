'use strict';
// Reads the depth of the watched queues from RabbitMQ (a passive declare) and
// publishes it as queue_depth updates. This is the dashboard's only outbound
// call besides OPA: each check has a deadline, transient failures are retried
// with jittered backoff, and an opossum circuit breaker fails fast while the
// broker keeps failing. Its state changes are logged, exported as
// aiswa_breaker_state{upstream="rabbitmq"} and published as breaker_state.

const CircuitBreaker = require('opossum');
const { backoffMs, withDeadline } = require('./consumer');
const { BREAKER_STATES } = require('./events');

class QueueNotFound extends Error {}

class QueueDepthPoller {
  constructor({ queues, intervalMs, hub, log, metrics = null, service = 'dashboard', timeoutMs = 2000, attempts = 3, breaker = {} }) {
    this.queues = queues;
    this.intervalMs = intervalMs;
    this.hub = hub;
    this.log = log;
    this.metrics = metrics;
    this.service = service;
    this.timeoutMs = timeoutMs;
    this.attempts = attempts;
    this.connection = null;
    this.channel = null;
    this.breaker = new CircuitBreaker((queue) => this.check(queue), {
      timeout: timeoutMs,
      errorThresholdPercentage: 50,
      volumeThreshold: 4,
      resetTimeout: 10000,
      // A queue that does not exist is a valid result, not a failure of the broker.
      errorFilter: (error) => error instanceof QueueNotFound,
      ...breaker,
    });
    this.breaker.on('open', () => this.stateChanged('open'));
    this.breaker.on('halfOpen', () => this.stateChanged('half-open'));
    this.breaker.on('close', () => this.stateChanged('closed'));
    this.breakerState = 'closed';
    this.metrics?.gauge('aiswa_breaker_state', { upstream: 'rabbitmq' }, 0);
  }

  /** Use `connection` (an amqplib connection) from now on. */
  useConnection(connection) {
    this.connection = connection;
    this.channel = null;
  }

  start() {
    if (!this.queues.length) return;
    this.timer = setInterval(() => this.poll(), this.intervalMs);
    this.timer.unref();
    this.log.info({ queues: this.queues, interval_ms: this.intervalMs }, 'watching queue depths');
  }

  stop() {
    clearInterval(this.timer);
    this.breaker.shutdown();
  }

  async poll() {
    if (this.polling) return;
    this.polling = true;
    try {
      for (const queue of this.queues) {
        try {
          const { messageCount, consumerCount } = await this.depth(queue);
          this.hub.publish({
            metric_type: 'queue_depth',
            value: messageCount,
            ts: Date.now() / 1000,
            service: '',
            labels: { queue, consumers: String(consumerCount) },
            run: null,
            event: 'queue.depth',
            key: `queue:${queue}`,
          });
        } catch (error) {
          const level = error instanceof QueueNotFound ? 'debug' : 'warn';
          this.log[level]({ queue, error: error.message }, 'queue depth not read');
        }
      }
    } finally {
      this.polling = false;
    }
  }

  /** Read the queue's depth through the breaker, retrying transient failures. */
  async depth(queue) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.breaker.fire(queue);
      } catch (error) {
        const final = attempt >= this.attempts || error instanceof QueueNotFound || this.breaker.opened;
        if (final) throw error;
        const delay = backoffMs(attempt, 100, 1000);
        this.log.warn({ queue, attempt, error: error.message, retry_in_ms: Math.round(delay) }, 'retrying queue depth');
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  async check(queue) {
    if (!this.connection) throw new Error('not connected to RabbitMQ');
    if (!this.channel) {
      const channel = await withDeadline(this.connection.createChannel(), this.timeoutMs, 'opening a channel');
      channel.on('error', () => {});
      channel.on('close', () => {
        if (this.channel === channel) this.channel = null;
      });
      this.channel = channel;
    }
    try {
      return await withDeadline(this.channel.checkQueue(queue), this.timeoutMs, `checking queue ${queue}`);
    } catch (error) {
      // RabbitMQ closes the channel with 404 when the queue does not exist.
      if (error.code === 404) throw new QueueNotFound(`queue ${queue} does not exist`);
      throw error;
    }
  }

  stateChanged(state) {
    const from = this.breakerState;
    this.breakerState = state;
    this.metrics?.gauge('aiswa_breaker_state', { upstream: 'rabbitmq' }, BREAKER_STATES[state]);
    this.log.warn({ upstream: 'rabbitmq', from, to: state }, 'circuit breaker state changed');
    this.hub.publish({
      metric_type: 'breaker_state',
      value: BREAKER_STATES[state],
      ts: Date.now() / 1000,
      service: this.service,
      labels: { upstream: 'rabbitmq', state, from },
      run: null,
      event: 'breaker.state_changed',
      key: `breaker:${this.service}:rabbitmq`,
    });
  }
}

module.exports = { QueueDepthPoller, QueueNotFound };
