'use strict';
// The OPA interceptor against a stand-in OPA that records its input, and
// against the real policy (policies/rego) when the opa binary is installed.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const { spawn } = require('node:child_process');
const grpc = require('@grpc/grpc-js');
const { once } = require('node:events');
const { Hub } = require('../src/hub');
const { DashboardGrpc, loadProto, SUBSCRIBE_METHOD } = require('../src/grpc');
const { Authorizer, authorizationInterceptor, UNAVAILABLE } = require('../src/authz');
const { Metrics } = require('../src/metrics');
const { captureLogger } = require('./support/logs');
const { freePorts } = require('./support/ports');

const ROOT = path.resolve(__dirname, '..', '..');
const PROTO_ROOT = path.join(ROOT, 'proto');
const proto = grpc.loadPackageDefinition(loadProto(PROTO_ROOT)).aiswa.dashboard.v1;
const GATEWAY = 'gateway.aiswa.serviceaccount.identity.linkerd.cluster.local';
const VISION = 'vision.aiswa.serviceaccount.identity.linkerd.cluster.local';

// A stand-in OPA: `answer(input)` returns [status, body] or a promise of it.
async function fakeOpa(answer) {
  const inputs = [];
  const server = http.createServer(async (request, response) => {
    let body = '';
    for await (const chunk of request) body += chunk;
    const document = JSON.parse(body);
    inputs.push({ path: request.url, document });
    const [status, reply] = await answer(document.input);
    response.writeHead(status, { 'content-type': 'application/json' });
    response.end(typeof reply === 'string' ? reply : JSON.stringify(reply));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, inputs, close: () => { server.closeAllConnections(); server.close(); } };
}

async function startGuarded(opaUrl, timeoutMs = 250) {
  const logs = captureLogger();
  const metrics = new Metrics();
  const hub = new Hub({ log: logs.log });
  const denials = [];
  const authorizer = new Authorizer({ destination: 'dashboard', opaUrl, timeoutMs, log: logs.log, metrics, onDenied: (d) => denials.push(d) });
  const server = new DashboardGrpc({ hub, log: logs.log, protoRoot: PROTO_ROOT, queue: 100, interceptors: [authorizationInterceptor(authorizer)], metrics });
  const port = await server.bind('127.0.0.1:0');
  server.setServing(true);
  const client = new proto.DashboardService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  return { hub, server, port, client, logs, metrics, denials, authorizer, stop: async () => { client.close(); await server.shutdown(500); } };
}

function metadata(entries) {
  const md = new grpc.Metadata();
  for (const [key, value] of Object.entries(entries)) md.set(key, value);
  return md;
}

// Subscribe and resolve to 'allowed' once the stream is open, or the error.
async function subscribe(g, md) {
  const call = g.client.SubscribeToUpdates({ metric_types: ['event'] }, md);
  let settled = false;
  const result = await Promise.race([
    once(call, 'error').then(([error]) => error),
    (async () => {
      while (g.server.streams.size === 0 && !settled) await new Promise((resolve) => setTimeout(resolve, 5));
      return 'allowed';
    })(),
  ]);
  settled = true;
  call.cancel();
  call.on('error', () => {});
  return result;
}

test('allowed call sends the expected input', async (t) => {
  const opa = await fakeOpa(() => [200, { result: { allow: true, reason: 'vision may call it' } }]);
  const g = await startGuarded(opa.url);
  t.after(async () => { await g.stop(); opa.close(); });
  // A claims header from anyone but the gateway never reaches the policy.
  const claims = Buffer.from(JSON.stringify({ sub: 'u1', role: 'admin' })).toString('base64url');
  assert.equal(await subscribe(g, metadata({ 'l5d-client-id': VISION, 'x-jwt-payload': claims })), 'allowed');
  assert.deepEqual(opa.inputs, [{
    path: '/v1/data/aiswa/authz/result',
    document: { input: { caller: VISION, destination: 'dashboard', method: SUBSCRIBE_METHOD } },
  }]);
});

test('gateway calls carry decoded claims', async (t) => {
  const opa = await fakeOpa((input) => [200, { result: { allow: false, reason: `role ${input.claims.role} may not` } }]);
  const g = await startGuarded(opa.url);
  t.after(async () => { await g.stop(); opa.close(); });
  const claims = Buffer.from(JSON.stringify({ sub: 'u1', role: 'viewer' })).toString('base64url');
  const denied = await subscribe(g, metadata({ 'l5d-client-id': GATEWAY, 'x-jwt-payload': claims }));
  assert.equal(denied.code, grpc.status.PERMISSION_DENIED);
  assert.equal(denied.details, 'role viewer may not');
  assert.deepEqual(opa.inputs[0].document.input.claims, { sub: 'u1', role: 'viewer' });

  const invalid = await subscribe(g, metadata({ 'l5d-client-id': GATEWAY, 'x-jwt-payload': Buffer.from('[1]').toString('base64url') }));
  assert.equal(invalid.code, grpc.status.PERMISSION_DENIED);
  assert.match(invalid.details, /the gateway's x-jwt-payload header is invalid: it is JSON array, not an object/);
  assert.equal(opa.inputs.length, 1);
  assert.deepEqual(g.denials.map((d) => d.kind), ['policy', 'invalid_claims']);
  assert.equal(g.metrics.get('aiswa_authz_denials_total', { destination: 'dashboard', method: SUBSCRIBE_METHOD, reason_kind: 'policy' }), 1);
  assert.equal(g.logs.find('call denied').length, 2);
});

test('missing OPA decision denies the call', async (t) => {
  const cases = [
    ['timeout', () => new Promise((resolve) => setTimeout(() => resolve([200, { result: { allow: true, reason: 'late' } }]), 400)), /timed out after 100 ms/],
    ['opa_error', () => [500, 'boom'], /OPA returned HTTP 500: boom/],
    ['invalid_response', () => [200, { result: { allow: 'yes' } }], /OPA returned no \{"allow": bool, "reason": string\}/],
    ['invalid_response', () => [200, 'not json'], /OPA returned no/],
  ];
  for (const [kind, answer, pattern] of cases) {
    const opa = await fakeOpa(answer);
    const g = await startGuarded(opa.url, 100);
    const error = await subscribe(g, metadata({ 'l5d-client-id': VISION }));
    await g.stop();
    opa.close();
    assert.equal(error.code, grpc.status.PERMISSION_DENIED, kind);
    assert.ok(error.details.startsWith(UNAVAILABLE), error.details);
    assert.match(error.details, pattern);
    assert.deepEqual(g.denials.map((d) => d.kind), [kind]);
  }
  const [port] = await freePorts(1);
  const g = await startGuarded(`http://127.0.0.1:${port}`);
  t.after(() => g.stop());
  const error = await subscribe(g, metadata({ 'l5d-client-id': VISION }));
  assert.equal(error.code, grpc.status.PERMISSION_DENIED);
  assert.match(error.details, /authorization service unavailable: the request to OPA failed: ECONNREFUSED/);
});

test('health checks are authorized too', async (t) => {
  const opa = await fakeOpa(() => [200, { result: { allow: true, reason: 'health checks are open' } }]);
  const g = await startGuarded(opa.url);
  t.after(async () => { await g.stop(); opa.close(); });
  const { service: healthService } = require('grpc-health-check');
  const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
  const health = new Health(`127.0.0.1:${g.port}`, grpc.credentials.createInsecure());
  t.after(() => health.close());
  const status = await new Promise((resolve, reject) => health.check({ service: '' }, (e, r) => (e ? reject(e) : resolve(r.status))));
  assert.equal(status, 'SERVING');
  assert.equal(opa.inputs[0].document.input.method, '/grpc.health.v1.Health/Check');
});

const OPA = path.join(ROOT, '.state', 'tools', 'go', 'bin', 'opa');
test('real policy denial reason', { skip: !fs.existsSync(OPA) && 'opa is not installed (bash scripts/install-opa.sh)' }, async (t) => {
  const [port] = await freePorts(1);
  const opa = spawn(OPA, ['run', '--server', '--addr', `127.0.0.1:${port}`, '--skip-version-check', path.join(ROOT, 'policies', 'rego')], { stdio: 'ignore' });
  t.after(() => opa.kill());
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 100; i += 1) {
    try {
      if ((await fetch(`${url}/health`)).ok) break;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  const g = await startGuarded(url, 2000);
  t.after(() => g.stop());
  const error = await subscribe(g, metadata({ 'l5d-client-id': VISION }));
  assert.equal(error.code, grpc.status.PERMISSION_DENIED);
  // Until mesh/topology.yaml lists the dashboard, the policy has no such workload.
  assert.match(error.details, /^vision\.aiswa may not call \/aiswa\.dashboard\.v1\.DashboardService\/SubscribeToUpdates on dashboard: /);
});
