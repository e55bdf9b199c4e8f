'use strict';
// Short-lived RabbitMQ credentials from OpenBao's rabbitmq secrets engine
// for the event consumer.
//
// The lease is renewed every third of its initial TTL. OpenBao extends a
// lease only up to the role's max TTL. So once a renewal leaves less than
// two renewal intervals, or the lease is gone (revoked, expired), new
// credentials are read. The consumer then opens a connection and consumer
// with them before it closes the old connection. While OpenBao does not
// respond, the consumer keeps the credentials it has and renewal is
// retried with jittered backoff. The old lease is left to expire, because
// the dashboard's policy does not allow revoking it.

const { setTimeout: sleep } = require('node:timers/promises');
const { backoffMs } = require('./consumer');
const { OpenBaoFatalError, leaseSuffix } = require('./openbao');

class AmqpCredentials {
  /**
   * `client` is a logged-in OpenBaoClient, `path` the credentials path, e.g.
   * rabbitmq/creds/dashboard. `onFatal(error)` receives errors that only a
   * restart can clear, such as a token that OpenBao no longer accepts.
   */
  constructor({ client, path, log, metrics = null, onFatal }) {
    this.client = client;
    this.path = path;
    this.log = log;
    this.metrics = metrics;
    this.onFatal = onFatal;
    this.lease = null;
    this.switchTo = null;
    this.abort = new AbortController();
    this.lock = Promise.resolve();
    this.maintaining = null;
  }

  /**
   * Register `switchTo(credentials)`, which moves the consumer to new
   * credentials. It must return at once when the consumer already uses them
   * or is not connected.
   */
  attach(switchTo) {
    this.switchTo = switchTo;
  }

  async stop() {
    this.abort.abort();
    await this.maintaining;
  }

  /** Return the credentials of the current lease: {id, username, password}. */
  current() {
    const { id, username, password } = this.lease;
    return { id, username, password };
  }

  /** Return the credentials for the next connection; the first call reads the first lease. */
  async forConnection() {
    if (!this.lease) {
      try {
        await this.obtainFirst();
      } catch (error) {
        if (error instanceof OpenBaoFatalError) this.fail(error);
        throw error;
      }
    }
    return this.current();
  }

  obtainFirst() {
    return this.exclusive(async () => {
      if (this.lease) return;
      this.lease = await this.obtain();
      this.log.info(this.describe(this.lease), 'RabbitMQ credentials obtained');
      this.maintaining = this.maintain().catch((error) => this.fail(error));
    });
  }

  /**
   * Look the lease up after the consumer lost its connection (`error`), and
   * replace it when OpenBao no longer has it: RabbitMQ closes the
   * connections of a user that OpenBao deleted. Resolves to true when the
   * credentials changed. Keeps them when OpenBao does not respond.
   */
  async replaceIfGone(error) {
    const lease = this.lease;
    if (!lease || this.abort.signal.aborted) return false;
    try {
      const found = await this.client.lookupLease(lease.id, { signal: this.abort.signal });
      this.log.info(
        { lease: leaseSuffix(lease.id), ttl_s: found?.data?.ttl, error: error.message },
        'RabbitMQ credentials lease still valid after the connection was lost',
      );
      return this.lease !== lease;
    } catch (lookupError) {
      if (this.abort.signal.aborted) return false;
      if (lookupError.status === 403) {
        this.fail(this.tokenRejected(lookupError));
        return false;
      }
      if (lookupError.status !== 400) {
        this.log.warn(
          { lease: leaseSuffix(lease.id), error: lookupError.message },
          'RabbitMQ credentials lease lookup failed; reconnecting with the current credentials',
        );
        return this.lease !== lease;
      }
    }
    try {
      await this.rotate(lease, 'lease gone after the connection was lost');
    } catch (rotateError) {
      if (rotateError instanceof OpenBaoFatalError) this.fail(rotateError);
      return false;
    }
    return true;
  }

  // Renews the current lease at every interval and replaces it when due.
  async maintain() {
    const { signal } = this.abort;
    let delay = this.lease.intervalMs;
    let attempt = 0;
    for (;;) {
      await sleep(delay, undefined, { signal });
      const lease = this.lease;
      await this.switchConsumer();
      try {
        if (lease.renewable) await this.renew(lease);
        attempt = 0;
      } catch (error) {
        if (signal.aborted) throw error;
        this.metrics?.inc('aiswa_dashboard_openbao_renewals_total', { kind: 'lease', outcome: 'failed' });
        if (error.status === 403) throw this.tokenRejected(error);
        if (error.transient) {
          attempt += 1;
          delay = backoffMs(attempt, 250, Math.max(250, Math.min(30000, lease.intervalMs / 2)));
          this.log.warn(
            {
              lease: leaseSuffix(lease.id),
              error: error.message,
              attempt,
              retry_in_ms: Math.round(delay),
              expires_in_s: Math.round((lease.expiresAt - Date.now()) / 1000),
            },
            'RabbitMQ credentials lease renewal failed; retrying',
          );
          continue;
        }
        // HTTP 400: the lease was revoked, expired or reached its max TTL.
        this.log.warn({ lease: leaseSuffix(lease.id), error: error.message }, 'RabbitMQ credentials lease can no longer be renewed');
        await this.rotate(lease, 'lease renewal rejected');
        await this.switchConsumer();
        delay = this.lease.intervalMs;
        continue;
      }
      if (lease.expiresAt - Date.now() < 2 * lease.intervalMs) {
        await this.rotate(lease, 'max TTL reached');
        await this.switchConsumer();
      }
      delay = this.lease.intervalMs;
    }
  }

  async renew(lease) {
    const result = await this.client.renewLease(lease.id, lease.ttlSeconds, { signal: this.abort.signal });
    lease.expiresAt = Date.now() + result.lease_duration * 1000;
    this.metrics?.inc('aiswa_dashboard_openbao_renewals_total', { kind: 'lease', outcome: 'renewed' });
    this.log.info({ lease: leaseSuffix(lease.id), ttl_s: result.lease_duration }, 'RabbitMQ credentials lease renewed');
  }

  /** Replace `lease` with a new one, unless another caller already did. */
  rotate(lease, reason) {
    return this.exclusive(async () => {
      if (this.lease !== lease) return;
      const next = await this.obtain();
      this.lease = next;
      this.metrics?.inc('aiswa_dashboard_amqp_credentials_replaced_total', { reason });
      this.log.info({ ...this.describe(next), previous_lease: leaseSuffix(lease.id), reason }, 'RabbitMQ credentials replaced');
    });
  }

  // Moves the consumer to the current lease; a failure is retried at the next interval.
  async switchConsumer() {
    if (!this.switchTo) return;
    try {
      await this.switchTo(this.current());
    } catch (error) {
      this.log.warn(
        { lease: leaseSuffix(this.lease.id), error: error.message },
        'switching the RabbitMQ connection to new credentials failed; retrying at the next renewal',
      );
    }
  }

  // Reads new credentials, retrying while OpenBao does not respond.
  // NOTE: a read that timed out may still have created a RabbitMQ user and
  // lease. No process uses them, and OpenBao deletes them when the lease expires.
  async obtain() {
    const { signal } = this.abort;
    for (let attempt = 1; ; attempt += 1) {
      let body;
      try {
        body = await this.client.read(this.path, { signal });
      } catch (error) {
        if (signal.aborted) throw error;
        if (error.status === 403) throw this.tokenRejected(error);
        if (!error.transient) {
          throw new OpenBaoFatalError(
            `reading RabbitMQ credentials from AISWA_AMQP_CREDS=${this.path} failed (${error.message}); ` +
              'check the path and the rabbitmq role in OpenBao',
            { cause: error },
          );
        }
        const delay = backoffMs(attempt, 250, 5000);
        this.log.warn({ path: this.path, error: error.message, attempt, retry_in_ms: Math.round(delay) }, 'reading RabbitMQ credentials failed; retrying');
        await sleep(delay, undefined, { signal });
        continue;
      }
      return this.parseLease(body);
    }
  }

  parseLease(body) {
    const username = body?.data?.username;
    const password = body?.data?.password;
    const ttlSeconds = body?.lease_duration;
    if (typeof username !== 'string' || typeof password !== 'string' || typeof body.lease_id !== 'string' || !(ttlSeconds > 0)) {
      throw new OpenBaoFatalError(
        `OpenBao's response for AISWA_AMQP_CREDS=${this.path} has no lease_id, lease_duration, ` +
          'data.username and data.password; the path must name a rabbitmq secrets engine role',
      );
    }
    const ttlMs = ttlSeconds * 1000;
    return {
      id: body.lease_id,
      username,
      password,
      renewable: body.renewable === true,
      ttlSeconds,
      intervalMs: ttlMs / 3,
      expiresAt: Date.now() + ttlMs,
    };
  }

  describe(lease) {
    return { lease: leaseSuffix(lease.id), user: lease.username, ttl_s: lease.ttlSeconds, renewable: lease.renewable };
  }

  tokenRejected(error) {
    return new OpenBaoFatalError(
      `OpenBao rejected the dashboard's token (${error.message}); it expired or was revoked, or its ` +
        `policy does not allow ${this.path}, sys/leases/renew and sys/leases/lookup`,
      { cause: error },
    );
  }

  fail(error) {
    if (this.abort.signal.aborted) return;
    this.onFatal(error);
  }

  exclusive(task) {
    const result = this.lock.then(task);
    this.lock = result.catch(() => {});
    return result;
  }
}

module.exports = { AmqpCredentials };
