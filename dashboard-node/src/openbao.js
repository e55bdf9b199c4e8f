'use strict';
// OpenBao client for the dashboard (HTTP API v1, token in X-Vault-Token).
// The dashboard logs in with AppRole: the launcher passes the role id and a
// response-wrapped, single-use secret id through an inherited file
// descriptor. The resulting periodic token is renewed with renew-self. Once
// OpenBao rejects a renewal, the process must exit, because only the
// supervisor can hand it a new secret id.

const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');
const { setTimeout: sleep } = require('node:timers/promises');
const { backoffMs } = require('./consumer');

/**
 * A failed OpenBao request. `status` is the HTTP status, or null when no
 * response arrived (connection refused, timed out). `errors` are OpenBao's
 * error strings, which never repeat the request's token or body.
 */
class OpenBaoError extends Error {
  constructor(message, { method, path, status = null, errors = [], cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'OpenBaoError';
    this.method = method;
    this.path = path;
    this.status = status;
    this.errors = errors;
  }

  /** True when a later retry may succeed: no response, 429 or 5xx (503 is "sealed"). */
  get transient() {
    return this.status === null || this.status === 429 || this.status >= 500;
  }
}

/** Failure that only a restart clears, so main.js exits non-zero on it. */
class OpenBaoFatalError extends Error {
  constructor(message, { cause } = {}) {
    super(message, cause ? { cause } : undefined);
    this.name = 'OpenBaoFatalError';
  }
}

/** Return the last segment of a lease id, e.g. "prf7sA06" of "rabbitmq/creds/dashboard/prf7sA06". */
function leaseSuffix(leaseId) {
  return String(leaseId).split('/').pop();
}

class OpenBaoClient {
  /**
   * `address` is the API's base URL, e.g. https://127.0.0.1:58200, and `ca`
   * the PEM text of the CA that signed its listener certificate (null to use
   * Node's default CAs). Every request ends after `timeoutMs`.
   */
  constructor({ address, ca = null, timeoutMs = 5000 }) {
    this.base = new URL(address);
    this.transport = this.base.protocol === 'https:' ? https : http;
    this.agent = new this.transport.Agent({ keepAlive: true, ...(ca ? { ca } : {}) });
    this.timeoutMs = timeoutMs;
    this.token = null;
  }

  /**
   * Send one request to /v1/`apiPath` and resolve to the parsed JSON body
   * (null for 204). Rejects with OpenBaoError. `token` defaults to the
   * client's token, and `signal` aborts the request.
   */
  request(method, apiPath, { body, token = this.token, signal } = {}) {
    const url = new URL(`v1/${apiPath}`, this.base.href.endsWith('/') ? this.base : `${this.base.href}/`);
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers = { Accept: 'application/json' };
    if (token) headers['X-Vault-Token'] = token;
    if (payload) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = payload.length;
    }
    const where = { method, path: apiPath };
    return new Promise((resolve, reject) => {
      const request = this.transport.request(url, { method, headers, agent: this.agent, signal }, (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('error', (error) => fail(error));
        response.on('end', () => {
          clearTimeout(timer);
          const text = Buffer.concat(chunks).toString();
          let parsed = null;
          try {
            parsed = text ? JSON.parse(text) : null;
          } catch {
            parsed = null;
          }
          const status = response.statusCode;
          if (status >= 200 && status <= 299) {
            resolve(parsed);
            return;
          }
          const errors = Array.isArray(parsed?.errors) ? parsed.errors.map(String) : [];
          const reason = errors.length ? errors.join('; ') : text.slice(0, 200);
          reject(new OpenBaoError(`OpenBao ${method} /v1/${apiPath} returned HTTP ${status}: ${reason}`, { ...where, status, errors }));
        });
      });
      const fail = (error) => {
        clearTimeout(timer);
        reject(new OpenBaoError(`OpenBao ${method} /v1/${apiPath} failed: ${error.message}`, { ...where, cause: error }));
      };
      const timer = setTimeout(() => {
        request.destroy(new Error(`timed out after ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      request.on('error', fail);
      request.end(payload);
    });
  }

  /** Unwrap a response-wrapped secret; the wrapping token is its own auth. Resolves to its data. */
  async unwrap(wrappingToken) {
    const body = await this.request('POST', 'sys/wrapping/unwrap', { token: wrappingToken });
    return body?.data || {};
  }

  /** Log in with AppRole and keep the token; resolves to {ttlMs, renewable, accessor}. */
  async loginAppRole(roleId, secretId) {
    const body = await this.request('POST', 'auth/approle/login', { body: { role_id: roleId, secret_id: secretId }, token: null });
    const auth = body?.auth;
    if (!auth || typeof auth.client_token !== 'string') {
      throw new OpenBaoError('OpenBao AppRole login returned no auth.client_token', { method: 'POST', path: 'auth/approle/login', status: 200 });
    }
    this.token = auth.client_token;
    return { ttlMs: auth.lease_duration * 1000, renewable: auth.renewable, accessor: auth.accessor };
  }

  /** Renew the client's own token; resolves to its new TTL in milliseconds. */
  async renewSelf({ signal } = {}) {
    const body = await this.request('POST', 'auth/token/renew-self', { body: {}, signal });
    return body.auth.lease_duration * 1000;
  }

  /** Read a secret, e.g. dynamic credentials; resolves to the whole response body. */
  read(apiPath, { signal } = {}) {
    return this.request('GET', apiPath, { signal });
  }

  /** Ask to extend a lease by `incrementSeconds`; OpenBao caps it at the role's max TTL. */
  renewLease(leaseId, incrementSeconds, { signal } = {}) {
    return this.request('PUT', 'sys/leases/renew', { body: { lease_id: leaseId, increment: incrementSeconds }, signal });
  }

  /** Resolve to the lease's metadata (ttl in seconds); rejects with HTTP 400 once it is gone. */
  lookupLease(leaseId, { signal } = {}) {
    return this.request('PUT', 'sys/leases/lookup', { body: { lease_id: leaseId }, signal });
  }

  close() {
    this.agent.destroy();
  }
}

/**
 * Read the launcher's bootstrap message from file descriptor `fd` to EOF and
 * close it: one JSON object {"role_id": ..., "wrapping_token": ...}. Throws
 * OpenBaoFatalError without repeating the content. Blocks until the writer
 * closes its end.
 */
function readBootstrap(fd) {
  let text;
  try {
    text = fs.readFileSync(fd, 'utf8');
  } catch (error) {
    throw new OpenBaoFatalError(
      `reading AISWA_OPENBAO_BOOTSTRAP_FD=${fd} failed (${error.code || error.message}); ` +
        'it must be a descriptor inherited open for reading, which `make up` sets',
      { cause: error },
    );
  } finally {
    try {
      fs.closeSync(fd);
    } catch {
      // Already closed, or never open: the read above reported it.
    }
  }
  let message;
  try {
    message = JSON.parse(text);
  } catch {
    message = null;
  }
  const valid = (name) => typeof message?.[name] === 'string' && message[name] !== '';
  if (!valid('role_id') || !valid('wrapping_token')) {
    throw new OpenBaoFatalError(
      `AISWA_OPENBAO_BOOTSTRAP_FD=${fd} carried ${text.length} bytes that are not a JSON object ` +
        'with the strings role_id and wrapping_token',
    );
  }
  return { roleId: message.role_id, wrappingToken: message.wrapping_token };
}

/**
 * Exchange the bootstrap message for a token: unwrap the secret id (once,
 * never retried, because a second unwrap always fails), then log in with
 * AppRole. Resolves to the login result; throws OpenBaoFatalError.
 */
async function loginWithWrappedSecretId(client, { roleId, wrappingToken }, { log, attempts = 3 } = {}) {
  let unwrapped;
  try {
    unwrapped = await client.unwrap(wrappingToken);
  } catch (error) {
    if (error.status === null) {
      throw new OpenBaoFatalError(
        `unwrapping the AppRole secret id failed with no response from OpenBao (${error.message}). ` +
          'The wrapping token is not retried, so the supervisor must restart the dashboard with a new one',
        { cause: error },
      );
    }
    throw new OpenBaoFatalError(
      `unwrapping the AppRole secret id failed (${error.message}): the wrapping token was already used ` +
        'or has expired, so the secret id may have been intercepted. It is not retried; the supervisor ' +
        'must restart the dashboard with a new wrapping token',
      { cause: error },
    );
  }
  const secretId = unwrapped.secret_id;
  if (typeof secretId !== 'string' || secretId === '') {
    throw new OpenBaoFatalError('the wrapping token from AISWA_OPENBAO_BOOTSTRAP_FD did not wrap an AppRole secret id (no data.secret_id)');
  }
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await client.loginAppRole(roleId, secretId);
    } catch (error) {
      // A login that got no response may not have used the secret id, so it is tried again.
      if (!error.transient || attempt >= attempts) {
        throw new OpenBaoFatalError(
          `AppRole login failed (${error.message}); the secret id is single-use, so the supervisor ` +
            'must restart the dashboard with a new one',
          { cause: error },
        );
      }
      const delay = backoffMs(attempt, 250, 2000);
      log?.warn({ error: error.message, attempt, retry_in_ms: Math.round(delay) }, 'OpenBao AppRole login failed; retrying');
      await sleep(delay);
    }
  }
}

/**
 * Keeps the client's periodic token alive: renew-self at a third of its TTL,
 * with jittered backoff while OpenBao does not respond. A rejected renewal
 * (HTTP 4xx, e.g. 403 once the token expired) calls `onFatal`, because a new
 * token needs a new secret id.
 */
class TokenRenewal {
  constructor({ client, ttlMs, log, metrics = null, onFatal }) {
    this.client = client;
    this.ttlMs = ttlMs;
    this.log = log;
    this.metrics = metrics;
    this.onFatal = onFatal;
    this.expiresAt = Date.now() + ttlMs;
    this.abort = new AbortController();
  }

  start() {
    this.running = this.run().catch((error) => {
      if (!this.abort.signal.aborted) this.onFatal(error);
    });
  }

  async run() {
    const { signal } = this.abort;
    let delay = this.ttlMs / 3;
    let attempt = 0;
    for (;;) {
      await sleep(delay, undefined, { signal });
      try {
        this.ttlMs = await this.client.renewSelf({ signal });
        this.expiresAt = Date.now() + this.ttlMs;
        attempt = 0;
        delay = this.ttlMs / 3;
        this.metrics?.inc('aiswa_dashboard_openbao_renewals_total', { kind: 'token', outcome: 'renewed' });
        this.log.info({ ttl_s: this.ttlMs / 1000 }, 'OpenBao token renewed');
      } catch (error) {
        if (signal.aborted) throw error;
        this.metrics?.inc('aiswa_dashboard_openbao_renewals_total', { kind: 'token', outcome: 'failed' });
        if (!error.transient) {
          throw new OpenBaoFatalError(
            `renewing the OpenBao token failed (${error.message}); it expired or was revoked, and only ` +
              'a restart by the supervisor brings a new secret id',
            { cause: error },
          );
        }
        attempt += 1;
        // Retry well within the token's remaining life, at least every 30 s.
        delay = backoffMs(attempt, 250, Math.max(250, Math.min(30000, this.ttlMs / 6)));
        this.log.warn(
          {
            error: error.message,
            attempt,
            retry_in_ms: Math.round(delay),
            expires_in_s: Math.round((this.expiresAt - Date.now()) / 1000),
          },
          'OpenBao token renewal failed; retrying',
        );
      }
    }
  }

  async stop() {
    this.abort.abort();
    await this.running;
  }
}

/**
 * Log in to OpenBao as configured by `settings` (config.openbao): read the
 * bootstrap message, unwrap the secret id, log in with AppRole and start
 * renewing the token. Resolves to {client, stop()}; throws
 * OpenBaoFatalError. `onFatal(error)` is called once the token cannot be
 * renewed any more.
 */
async function connectOpenBao(settings, { log, metrics = null, onFatal }) {
  const bootstrap = readBootstrap(settings.bootstrapFd);
  let ca = null;
  if (settings.caCertPath) {
    try {
      ca = fs.readFileSync(settings.caCertPath);
    } catch (error) {
      throw new OpenBaoFatalError(`reading AISWA_OPENBAO_CACERT=${settings.caCertPath} failed: ${error.message}`, { cause: error });
    }
  }
  const client = new OpenBaoClient({ address: settings.address, ca, timeoutMs: settings.timeoutMs });
  let login;
  try {
    login = await loginWithWrappedSecretId(client, bootstrap, { log });
  } catch (error) {
    client.close();
    throw error;
  }
  log.info({ address: settings.address, ttl_s: login.ttlMs / 1000, renewable: login.renewable }, 'logged in to OpenBao with AppRole');
  let renewal = null;
  if (login.ttlMs > 0) {
    renewal = new TokenRenewal({ client, ttlMs: login.ttlMs, log, metrics, onFatal });
    renewal.start();
  }
  return {
    client,
    async stop() {
      await renewal?.stop();
      client.close();
    },
  };
}

module.exports = {
  OpenBaoClient,
  OpenBaoError,
  OpenBaoFatalError,
  TokenRenewal,
  connectOpenBao,
  leaseSuffix,
  loginWithWrappedSecretId,
  readBootstrap,
};
