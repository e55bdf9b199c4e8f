'use strict';
// Settings of the dashboard process, read from AISWA_* environment variables.
// The names follow services/runtime/aiswa_runtime/_config.py, so the launcher
// sets them the same way for every workload.

const path = require('node:path');

class ConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = 'ConfigError';
  }
}

const TRACE_EXPORTERS = new Set(['none', 'console', 'otlp', 'file']);
const LOG_LEVELS = new Set(['DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL']);

function required(env, name, example) {
  const value = env[name];
  if (value === undefined || value === '') {
    throw new ConfigError(
      `environment variable ${name} is not set; the launcher sets it (see \`make up\`), ` +
        `or export it to run the dashboard alone, e.g. ${name}=${example}`,
    );
  }
  return value;
}

function address(name, value) {
  const cut = value.lastIndexOf(':');
  const host = value.slice(0, cut).replace(/^\[|\]$/g, '');
  const port = value.slice(cut + 1);
  if (cut <= 0 || !/^\d+$/.test(port) || Number(port) > 65535) {
    throw new ConfigError(`${name}=${JSON.stringify(value)} is not HOST:PORT, e.g. 127.0.0.1:50055`);
  }
  return { host, port: Number(port), text: value };
}

function positiveNumber(env, name, fallback, { integer = false } = {}) {
  const raw = env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!(value > 0) || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
    const kind = integer ? 'a whole number' : 'a number';
    throw new ConfigError(`${name}=${JSON.stringify(raw)} is invalid; give ${kind} greater than 0, e.g. ${fallback}`);
  }
  return value;
}

function list(env, name, fallback) {
  const raw = env[name];
  if (raw === undefined) return fallback;
  return raw.split(',').map((item) => item.trim()).filter(Boolean);
}

/**
 * Read the OpenBao settings that AISWA_AMQP_CREDS needs; null when it is
 * unset, so AISWA_AMQP_URL carries static credentials.
 */
function openbaoSettings(env, amqpUrl) {
  const credsPath = env.AISWA_AMQP_CREDS;
  if (credsPath === undefined || credsPath === '') return null;
  if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)+$/.test(credsPath) || credsPath.split('/').includes('..')) {
    throw new ConfigError(
      `AISWA_AMQP_CREDS=${JSON.stringify(credsPath)} is not an OpenBao path without /v1/, e.g. rabbitmq/creds/dashboard`,
    );
  }
  const parsed = new URL(amqpUrl);
  if (parsed.username || parsed.password) {
    throw new ConfigError(
      'AISWA_AMQP_URL must not contain a user or password when AISWA_AMQP_CREDS is set, because the ' +
        'credentials come from OpenBao, e.g. AISWA_AMQP_URL=amqp://127.0.0.1:55672/aiswa',
    );
  }
  for (const name of ['AISWA_OPENBAO_ADDR', 'AISWA_OPENBAO_BOOTSTRAP_FD']) {
    if (env[name] === undefined || env[name] === '') {
      throw new ConfigError(
        `environment variable ${name} is not set, but AISWA_AMQP_CREDS is, so the dashboard must log in to ` +
          'OpenBao; `make up` sets both, or unset AISWA_AMQP_CREDS and give the credentials in AISWA_AMQP_URL',
      );
    }
  }
  const fdText = env.AISWA_OPENBAO_BOOTSTRAP_FD;
  if (!/^\d+$/.test(fdText)) {
    throw new ConfigError(`AISWA_OPENBAO_BOOTSTRAP_FD=${JSON.stringify(fdText)} is not a file descriptor number, e.g. 3`);
  }
  return {
    credsPath,
    address: openbaoUrl(env.AISWA_OPENBAO_ADDR),
    caCertPath: env.AISWA_OPENBAO_CACERT || null,
    bootstrapFd: Number(fdText),
    timeoutMs: positiveNumber(env, 'AISWA_OPENBAO_TIMEOUT', 5) * 1000,
  };
}

function parseUrl(name, value) {
  try {
    return new URL(value);
  } catch {
    throw new ConfigError(`${name}=${JSON.stringify(value)} is not a URL`);
  }
}

function isLoopback(url) {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** OpenBao is shared by the pods: https anywhere, plain http only on loopback. */
function openbaoUrl(value) {
  const url = parseUrl('AISWA_OPENBAO_ADDR', value);
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && isLoopback(url))) {
    throw new ConfigError(
      `AISWA_OPENBAO_ADDR=${JSON.stringify(value)} is invalid: it must be https://, or http:// ` +
        'on a loopback address, because the login and credentials cross it, e.g. https://10.77.0.1:58200',
    );
  }
  return value.replace(/\/+$/, '');
}

function loopbackUrl(name, value, schemes, example = 'http://127.0.0.1:8181') {
  const url = parseUrl(name, value);
  if (!schemes.includes(url.protocol) || !isLoopback(url)) {
    throw new ConfigError(
      `${name}=${JSON.stringify(value)} is invalid: it must be ${schemes.join(' or ')}// on a ` +
        `loopback address, because it runs beside the workload, e.g. ${example}`,
    );
  }
  return value.replace(/\/+$/, '');
}

/**
 * Read the configuration from `env` (process.env by default).
 *
 * Throws ConfigError naming the variable and a valid value when a required
 * setting is missing or invalid.
 */
function wsAuthz(env) {
  const value = env.AISWA_DASHBOARD_WS_AUTHZ || 'opa';
  if (!['opa', 'off'].includes(value)) {
    throw new ConfigError(`AISWA_DASHBOARD_WS_AUTHZ=${JSON.stringify(value)} is invalid; use 'opa' or 'off'`);
  }
  return value;
}

function loadConfig(env = process.env) {
  const service = env.AISWA_SERVICE || 'dashboard';
  const namespace = env.AISWA_NAMESPACE || 'aiswa';
  const grpc = address('AISWA_GRPC_ADDRESS', required(env, 'AISWA_GRPC_ADDRESS', '127.0.0.1:50055'));
  const http = address('AISWA_HTTP_ADDRESS', required(env, 'AISWA_HTTP_ADDRESS', '127.0.0.1:58080'));
  const amqpUrl = required(env, 'AISWA_AMQP_URL', 'amqp://USER:PASSWORD@127.0.0.1:55672/aiswa');
  if (!/^amqps?:\/\//.test(amqpUrl) || !URL.canParse(amqpUrl)) {
    throw new ConfigError('AISWA_AMQP_URL is not an amqp:// URL, e.g. amqp://USER:PASSWORD@127.0.0.1:55672/aiswa');
  }
  const openbao = openbaoSettings(env, amqpUrl);
  const metrics = env.AISWA_METRICS_ADDRESS ? address('AISWA_METRICS_ADDRESS', env.AISWA_METRICS_ADDRESS) : null;

  const traceExporter = env.AISWA_TRACE_EXPORTER || 'none';
  if (!TRACE_EXPORTERS.has(traceExporter)) {
    throw new ConfigError(
      `AISWA_TRACE_EXPORTER=${JSON.stringify(traceExporter)} is invalid; use none, console, otlp or file`,
    );
  }
  const traceEndpoint = env.AISWA_TRACE_ENDPOINT || null;
  if (traceExporter === 'otlp' && !traceEndpoint) {
    throw new ConfigError('AISWA_TRACE_EXPORTER=otlp needs AISWA_TRACE_ENDPOINT=HOST:PORT, e.g. 127.0.0.1:54317');
  }
  if (traceEndpoint) address('AISWA_TRACE_ENDPOINT', traceEndpoint.replace(/^https?:\/\//, ''));
  const stateDir = env.AISWA_STATE_DIR || '.state';

  const logLevel = (env.AISWA_LOG_LEVEL || 'INFO').toUpperCase();
  if (!LOG_LEVELS.has(logLevel)) {
    throw new ConfigError(`AISWA_LOG_LEVEL=${JSON.stringify(env.AISWA_LOG_LEVEL)} is invalid; use DEBUG, INFO, WARNING or ERROR`);
  }

  const opaUrl = env.AISWA_OPA_URL ? loopbackUrl('AISWA_OPA_URL', env.AISWA_OPA_URL, ['http:', 'https:']) : null;

  return Object.freeze({
    service,
    namespace,
    identity: `${service}.${namespace}`,
    grpc,
    http,
    metrics,
    amqpUrl,
    // Short-lived RabbitMQ credentials from OpenBao, or null for the static
    // ones in amqpUrl: {credsPath, address, caCertPath, bootstrapFd, timeoutMs}.
    openbao,
    opaUrl,
    // 'opa' asks OPA about every WebSocket upgrade as SubscribeToUpdates;
    // 'off' serves the page's WebSocket to any local client (see README).
    wsAuthz: wsAuthz(env),
    opaTimeoutMs: positiveNumber(env, 'AISWA_OPA_TIMEOUT', 0.25) * 1000,
    traceExporter,
    traceEndpoint,
    traceFile: env.AISWA_TRACE_FILE || path.join(stateDir, 'traces', `${service}.jsonl`),
    logLevel,
    shutdownGraceMs: positiveNumber(env, 'AISWA_SHUTDOWN_GRACE', 10) * 1000,
    protoRoot: env.AISWA_PROTO_ROOT || path.resolve(__dirname, '..', '..', 'proto'),
    // The dashboard's own queue on aiswa.events and what it receives.
    queue: env.AISWA_DASHBOARD_QUEUE || 'dashboard.events',
    bindingKeys: list(env, 'AISWA_DASHBOARD_BINDING_KEYS', ['#']),
    prefetch: positiveNumber(env, 'AISWA_DASHBOARD_PREFETCH', 256, { integer: true }),
    // Queues whose depth the dashboard reads from the broker itself.
    watchQueues: list(env, 'AISWA_DASHBOARD_WATCH_QUEUES', []),
    queuePollMs: positiveNumber(env, 'AISWA_DASHBOARD_QUEUE_POLL_SECONDS', 5) * 1000,
    // Per-client bounds; see docs/dashboard.md, "Slow clients".
    wsWindow: positiveNumber(env, 'AISWA_DASHBOARD_WS_WINDOW', 256, { integer: true }),
    wsQueue: positiveNumber(env, 'AISWA_DASHBOARD_WS_QUEUE', 1024, { integer: true }),
    wsMaxBytes: positiveNumber(env, 'AISWA_DASHBOARD_WS_MAX_BYTES', 4 * 1024 * 1024, { integer: true }),
    grpcQueue: positiveNumber(env, 'AISWA_DASHBOARD_GRPC_QUEUE', 1024, { integer: true }),
    maxClients: positiveNumber(env, 'AISWA_DASHBOARD_MAX_CLIENTS', 10000, { integer: true }),
  });
}

module.exports = { ConfigError, loadConfig, address };
