'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { loadConfig, ConfigError } = require('../src/config');

const BASE = {
  AISWA_GRPC_ADDRESS: '127.0.0.1:50055',
  AISWA_HTTP_ADDRESS: '127.0.0.1:58080',
  AISWA_AMQP_URL: 'amqp://dashboard:pw@127.0.0.1:55672/aiswa',
};

test('defaults of optional settings', () => {
  const config = loadConfig(BASE);
  assert.equal(config.service, 'dashboard');
  assert.equal(config.identity, 'dashboard.aiswa');
  assert.deepEqual([config.grpc.host, config.grpc.port], ['127.0.0.1', 50055]);
  assert.equal(config.opaUrl, null);
  assert.equal(config.opaTimeoutMs, 250);
  assert.equal(config.queue, 'dashboard.events');
  assert.deepEqual(config.bindingKeys, ['#']);
  assert.deepEqual(config.watchQueues, []);
  assert.equal(config.traceExporter, 'none');
  assert.equal(config.wsAuthz, 'opa');
});

test('settings read from environment', () => {
  const config = loadConfig({
    ...BASE,
    AISWA_OPA_URL: 'http://127.0.0.1:50355/',
    AISWA_OPA_TIMEOUT: '0.5',
    AISWA_TRACE_EXPORTER: 'otlp',
    AISWA_TRACE_ENDPOINT: '127.0.0.1:54317',
    AISWA_DASHBOARD_WATCH_QUEUES: 'reflector.analyze, reflector.analyze.dlq',
    AISWA_DASHBOARD_WS_WINDOW: '32',
    AISWA_METRICS_ADDRESS: '127.0.0.1:51055',
    AISWA_DASHBOARD_WS_AUTHZ: 'off',
  });
  assert.equal(config.opaUrl, 'http://127.0.0.1:50355');
  assert.equal(config.opaTimeoutMs, 500);
  assert.deepEqual(config.watchQueues, ['reflector.analyze', 'reflector.analyze.dlq']);
  assert.equal(config.wsWindow, 32);
  assert.equal(config.metrics.port, 51055);
  assert.equal(config.wsAuthz, 'off');
});

const OPENBAO = {
  ...BASE,
  AISWA_AMQP_URL: 'amqp://127.0.0.1:55672/aiswa',
  AISWA_AMQP_CREDS: 'rabbitmq/creds/dashboard',
  AISWA_OPENBAO_ADDR: 'https://127.0.0.1:58200/',
  AISWA_OPENBAO_CACERT: '/state/openbao/tls/ca.pem',
  AISWA_OPENBAO_BOOTSTRAP_FD: '3',
};

test('OpenBao settings read from environment', () => {
  assert.equal(loadConfig(BASE).openbao, null);
  const { openbao } = loadConfig(OPENBAO);
  assert.equal(openbao.credsPath, 'rabbitmq/creds/dashboard');
  assert.equal(openbao.address, 'https://127.0.0.1:58200');
  assert.equal(openbao.caCertPath, '/state/openbao/tls/ca.pem');
  assert.equal(openbao.bootstrapFd, 3);
  assert.equal(openbao.timeoutMs, 5000);
  assert.equal(loadConfig({ ...OPENBAO, AISWA_OPENBAO_CACERT: '' }).openbao.caCertPath, null);
  // On the pods' bridge, as `make up` sets it when it runs as root.
  assert.equal(loadConfig({ ...OPENBAO, AISWA_OPENBAO_ADDR: 'https://10.77.0.1:58200/' }).openbao.address,
    'https://10.77.0.1:58200');
});

test('invalid OpenBao settings raise ConfigError', () => {
  const cases = [
    [{ AISWA_OPENBAO_ADDR: undefined }, /AISWA_OPENBAO_ADDR is not set, but AISWA_AMQP_CREDS is.*`make up` sets both/],
    [{ AISWA_OPENBAO_BOOTSTRAP_FD: undefined }, /AISWA_OPENBAO_BOOTSTRAP_FD is not set, but AISWA_AMQP_CREDS is.*`make up` sets both/],
    [{ AISWA_OPENBAO_BOOTSTRAP_FD: 'three' }, /AISWA_OPENBAO_BOOTSTRAP_FD="three" is not a file descriptor number/],
    [{ AISWA_OPENBAO_ADDR: 'http://10.0.0.5:8200' }, /AISWA_OPENBAO_ADDR="http:\/\/10\.0\.0\.5:8200" is invalid: it must be https:\/\/, or http:\/\/ on a loopback address/],
    [{ AISWA_OPENBAO_ADDR: 'bao:8200' }, /AISWA_OPENBAO_ADDR="bao:8200" is invalid/],
    [{ AISWA_AMQP_URL: 'amqp://dashboard:pw@127.0.0.1:55672/aiswa' }, /AISWA_AMQP_URL must not contain a user or password when AISWA_AMQP_CREDS is set/],
    [{ AISWA_AMQP_CREDS: '/v1/rabbitmq/creds/dashboard' }, /AISWA_AMQP_CREDS="\/v1\/rabbitmq\/creds\/dashboard" is not an OpenBao path without \/v1\//],
    [{ AISWA_AMQP_CREDS: 'rabbitmq/../sys/raw' }, /is not an OpenBao path/],
    [{ AISWA_OPENBAO_TIMEOUT: '0' }, /AISWA_OPENBAO_TIMEOUT="0" is invalid; give a number greater than 0/],
  ];
  for (const [change, pattern] of cases) {
    const env = { ...OPENBAO, ...change };
    for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
    assert.throws(() => loadConfig(env), (error) => error instanceof ConfigError && pattern.test(error.message), JSON.stringify(change));
  }
});

test('invalid settings raise ConfigError', () => {
  const cases = [
    [{ AISWA_GRPC_ADDRESS: undefined }, /AISWA_GRPC_ADDRESS is not set.*e\.g\. AISWA_GRPC_ADDRESS=127\.0\.0\.1:50055/],
    [{ AISWA_HTTP_ADDRESS: 'localhost' }, /AISWA_HTTP_ADDRESS="localhost" is not HOST:PORT/],
    [{ AISWA_AMQP_URL: 'http://x' }, /AISWA_AMQP_URL is not an amqp:\/\/ URL/],
    [{ AISWA_OPA_URL: 'http://10.0.0.5:8181' }, /must be http: or https:\/\/ on a loopback address/],
    [{ AISWA_OPA_TIMEOUT: '0' }, /AISWA_OPA_TIMEOUT="0" is invalid; give a number greater than 0/],
    [{ AISWA_TRACE_EXPORTER: 'jaeger' }, /use none, console, otlp or file/],
    [{ AISWA_TRACE_EXPORTER: 'otlp' }, /needs AISWA_TRACE_ENDPOINT/],
    [{ AISWA_DASHBOARD_WS_QUEUE: '1.5' }, /give a whole number greater than 0/],
    [{ AISWA_LOG_LEVEL: 'loud' }, /use DEBUG, INFO, WARNING or ERROR/],
    [{ AISWA_DASHBOARD_WS_AUTHZ: 'none' }, /AISWA_DASHBOARD_WS_AUTHZ="none" is invalid; use 'opa' or 'off'/],
  ];
  for (const [change, pattern] of cases) {
    const env = { ...BASE, ...change };
    for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key];
    assert.throws(() => loadConfig(env), (error) => error instanceof ConfigError && pattern.test(error.message), JSON.stringify(change));
  }
});
