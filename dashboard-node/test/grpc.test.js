'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const net = require('node:net');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const { once } = require('node:events');
const { Hub } = require('../src/hub');
const { DashboardGrpc, loadProto } = require('../src/grpc');
const { Metrics } = require('../src/metrics');
const { captureLogger } = require('./support/logs');
const { event } = require('./support/web');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const proto = grpc.loadPackageDefinition(loadProto(PROTO_ROOT)).aiswa.dashboard.v1;

async function startGrpc(options = {}) {
  const logs = captureLogger();
  const hub = new Hub({ log: logs.log });
  const server = new DashboardGrpc({ hub, log: logs.log, protoRoot: PROTO_ROOT, queue: 1024, metrics: new Metrics(), ...options });
  const port = await server.bind('127.0.0.1:0');
  server.setServing(true);
  const client = new proto.DashboardService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
  return { hub, server, port, client, logs, stop: async () => { client.close(); await server.shutdown(1000); } };
}

function collect(call, count) {
  const updates = [];
  return new Promise((resolve, reject) => {
    call.on('data', (update) => {
      updates.push(update);
      if (updates.length === count) resolve(updates);
    });
    call.on('error', reject);
  });
}

test('SubscribeToUpdates filters by metric type', async (t) => {
  const g = await startGrpc();
  t.after(() => g.stop());
  const call = g.client.SubscribeToUpdates({ metric_types: ['run_progress', 'breaker_state'] });
  await waitFor(() => g.server.streams.size === 1);
  const received = collect(call, 4);
  const types = ['queue_depth', 'run_progress', 'request_rate', 'breaker_state', 'event', 'run_progress', 'authz_denied', 'breaker_state'];
  for (const type of types) {
    const update = event(type, 0.5);
    if (type === 'run_progress') update.run = { run_id: 'r1', project_id: 'p1', state: 'RUN_STATE_RUNNING', files_done: 1, files_total: 2, error: '' };
    g.hub.publish(update);
  }
  const updates = await received;
  call.cancel();
  assert.deepEqual(updates.map((u) => u.metric_type), ['run_progress', 'breaker_state', 'run_progress', 'breaker_state']);
  assert.deepEqual(updates.map((u) => u.sequence), [2, 4, 6, 8]);
  const [first] = updates;
  assert.equal(first.value, 0.5);
  assert.equal(first.run.run_id, 'r1');
  assert.equal(first.run.state, 'RUN_STATE_RUNNING');
  assert.equal(first.event, 'test.event');
  assert.equal(first.snapshot, false);
  assert.ok(first.timestamp.seconds > 1700000000);
});

test('include_snapshot sends latest values first', async (t) => {
  const g = await startGrpc();
  t.after(() => g.stop());
  g.hub.publish({ ...event('breaker_state', 2), key: 'breaker:vision:projects' });
  g.hub.publish({ ...event('queue_depth', 3), key: 'queue:q' });
  g.hub.publish({ ...event('breaker_state', 0), key: 'breaker:vision:projects' });
  const call = g.client.SubscribeToUpdates({ metric_types: ['breaker_state'], include_snapshot: true });
  const received = collect(call, 2);
  await waitFor(() => g.server.streams.size === 1);
  g.hub.publish(event('breaker_state', 1));
  const updates = await received;
  call.cancel();
  assert.deepEqual(updates.map((u) => [u.value, u.snapshot]), [[0, true], [1, false]]);
});

test('unknown metric type is INVALID_ARGUMENT', async (t) => {
  const g = await startGrpc();
  t.after(() => g.stop());
  const call = g.client.SubscribeToUpdates({ metric_types: ['cpu'] });
  call.on('data', () => {});
  const [error] = await once(call, 'error');
  assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
  assert.match(error.details, /unknown metric type cpu; use some of run_progress/);
});

test('slow stream ends with RESOURCE_EXHAUSTED', { timeout: 30000 }, async (t) => {
  const g = await startGrpc({ queue: 256 });
  t.after(() => g.stop());
  // The slow subscriber reaches the server through a proxy that stops
  // reading from it, as a stalled network or process would.
  const proxy = await stallingProxy(g.port);
  t.after(() => proxy.close());
  const slowClient = new proto.DashboardService(`127.0.0.1:${proxy.port}`, grpc.credentials.createInsecure());
  t.after(() => slowClient.close());
  const slow = slowClient.SubscribeToUpdates({});
  slow.on('data', () => {});
  const fast = g.client.SubscribeToUpdates({});
  await waitFor(() => g.server.streams.size === 2);
  proxy.stall();

  let received = 0;
  fast.on('data', () => {
    received += 1;
  });
  const fastDone = collect(fast, 1000);
  const slowError = once(slow, 'error');
  const padding = 'x'.repeat(16 * 1024);
  // Rounds of ten, each after the fast stream took the last one: the slow
  // stream, paused, falls further behind with every round.
  for (let i = 0; i < 1000; i += 1) {
    const update = event('event');
    update.labels.padding = padding;
    g.hub.publish(update);
    if (i % 10 === 9) await waitFor(() => received === i + 1);
  }

  const updates = await fastDone;
  assert.equal(updates.length, 1000);
  proxy.resume();
  const [error] = await slowError;
  assert.equal(error.code, grpc.status.RESOURCE_EXHAUSTED);
  assert.match(error.details, /subscriber too slow/);
  assert.equal(g.server.drops, 1);
  fast.cancel();
});

test('health status follows setServing', async (t) => {
  const g = await startGrpc();
  t.after(() => g.stop());
  const { service: healthService } = require('grpc-health-check');
  const Health = grpc.makeGenericClientConstructor(healthService, 'Health');
  const health = new Health(`127.0.0.1:${g.port}`, grpc.credentials.createInsecure());
  t.after(() => health.close());
  const check = (service) => new Promise((resolve, reject) => health.check({ service }, (error, reply) => (error ? reject(error) : resolve(reply.status))));
  assert.equal(await check(''), 'SERVING');
  assert.equal(await check('aiswa.dashboard.v1.DashboardService'), 'SERVING');
  g.server.setServing(false);
  assert.equal(await check(''), 'NOT_SERVING');
});

test('shutdown ends open streams with UNAVAILABLE', async () => {
  const g = await startGrpc();
  const call = g.client.SubscribeToUpdates({});
  call.on('data', () => {});
  await waitFor(() => g.server.streams.size === 1);
  const ended = once(call, 'error');
  await g.server.shutdown(1000);
  const [error] = await ended;
  assert.equal(error.code, grpc.status.UNAVAILABLE);
  assert.match(error.details, /shutting down; subscribe again/);
  g.client.close();
});

function stallingProxy(targetPort) {
  const upstreams = new Set();
  const server = net.createServer((downstream) => {
    const upstream = net.connect(targetPort, '127.0.0.1');
    upstreams.add(upstream);
    downstream.pipe(upstream);
    upstream.on('data', (chunk) => downstream.write(chunk));
    const close = () => {
      downstream.destroy();
      upstream.destroy();
    };
    downstream.on('error', close);
    upstream.on('error', close);
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({
      port: server.address().port,
      stall: () => upstreams.forEach((socket) => socket.pause()),
      resume: () => upstreams.forEach((socket) => socket.resume()),
      close: () => {
        upstreams.forEach((socket) => socket.destroy());
        server.close();
      },
    }));
  });
}

async function waitFor(predicate, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}
