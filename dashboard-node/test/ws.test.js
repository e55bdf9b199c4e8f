'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { setTimeout: sleep } = require('node:timers/promises');
const { connectClient, connectStalledClient } = require('./support/clients');
const { startWeb, event } = require('./support/web');

async function until(predicate, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

test('bounded buffer drops stalled client', async (t) => {
  const web = await startWeb({ window: 4, queue: 8 });
  t.after(() => web.stop());
  const fast = await connectClient(web.url);
  const stalled = await connectStalledClient(web.port);
  const socketClosed = new Promise((resolve) => stalled.on('close', resolve));
  for (let i = 0; i < 40; i += 1) {
    web.hub.publish(event());
    await sleep(1);
  }
  await until(() => fast.sequences.length === 40, 'the fast client to receive 40 updates');
  assert.deepEqual(fast.sequences, Array.from({ length: 40 }, (_, i) => i + 1));
  assert.equal(web.web.drops, 1);
  const drop = web.logs.find('slow WebSocket client dropped');
  assert.equal(drop.length, 1);
  assert.match(drop[0].reason, /4 updates unacknowledged and 8 queued/);
  stalled.resume();
  await socketClosed;
  await until(() => web.web.clients.size === 1, 'the server to forget the dropped client');
});

test('unsent byte limit drops client', async (t) => {
  const web = await startWeb({ window: 1000, queue: 1000, maxBytes: 64 * 1024 });
  t.after(() => web.stop());
  const stalled = await connectStalledClient(web.port);
  t.after(() => stalled.destroy());
  const big = event();
  big.labels.padding = 'x'.repeat(32 * 1024);
  // The kernel takes a few MB before the socket buffers in user space.
  for (let i = 0; i < 400 && web.web.drops === 0; i += 1) {
    web.hub.publish({ ...big, labels: { ...big.labels } });
    await sleep(0);
  }
  assert.equal(web.web.drops, 1);
  assert.match(web.logs.find('slow WebSocket client dropped')[0].reason, /more than 65536 bytes unsent/);
});

test('snapshot, then requested types only', async (t) => {
  const web = await startWeb();
  t.after(() => web.stop());
  web.hub.publish({ ...event('breaker_state'), key: 'breaker:vision:projects' });
  web.hub.publish({ ...event('queue_depth'), key: 'queue:q' });
  const client = await connectClient(`${web.url}?metric_types=breaker_state,run_progress`, { keepUpdates: true });
  assert.deepEqual(client.snapshot.updates.map((u) => u.metric_type), ['breaker_state']);
  assert.equal(client.snapshot.window, 8);
  web.hub.publish(event('queue_depth'));
  web.hub.publish(event('run_progress'));
  web.hub.publish(event('breaker_state'));
  await until(() => client.updates.length === 2, 'two updates');
  assert.deepEqual(client.updates.map((u) => u.metric_type), ['run_progress', 'breaker_state']);
});

test('bad upgrades rejected with reason', async (t) => {
  const decisions = [];
  const web = await startWeb({
    maxClients: 1,
    authorize: async (request) => {
      decisions.push(request.headers['l5d-client-id']);
      return request.headers['l5d-client-id'] === 'intruder'
        ? { allow: false, reason: 'intruder may not call it' }
        : { allow: true, reason: 'ok' };
    },
  });
  t.after(() => web.stop());
  await assert.rejects(connectClient(`${web.url}?metric_types=cpu`), { status: 400, body: /unknown metric type cpu; use some of run_progress/ });
  await assert.rejects(connectClient(`ws://127.0.0.1:${web.port}/other`), { status: 404 });
  await assert.rejects(connectClient(web.url, { headers: { origin: 'http://evil.example' } }), { status: 403, body: /origin http:\/\/evil.example may not open/ });
  await assert.rejects(connectClient(web.url, { headers: { 'l5d-client-id': 'intruder' } }), { status: 403, body: /intruder may not call it/ });
  const first = await connectClient(web.url, { headers: { origin: `http://127.0.0.1:${web.port}` } });
  await assert.rejects(connectClient(web.url), { status: 503, body: /at most 1 clients/ });
  first.ws.close();
  assert.ok(decisions.includes('intruder'));
});

test('close sends 1001 to clients', async () => {
  const web = await startWeb();
  const client = await connectClient(web.url);
  web.web.close();
  assert.equal(await client.closed, 1001);
  await web.stop();
});
