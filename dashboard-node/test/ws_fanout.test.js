'use strict';
// One thousand WebSocket clients on loopback each receive every update of a
// burst, in order, while one client that stopped reading is dropped.

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { fork } = require('node:child_process');
const { once } = require('node:events');
const { setTimeout: sleep } = require('node:timers/promises');
const { connectClient, connectStalledClient } = require('./support/clients');

const CLIENTS = 1000;
const BURST = 300;
const WINDOW = 32;
const QUEUE = 96;

function request(child, message, key) {
  return new Promise((resolve) => {
    const listener = (reply) => {
      if (reply[key] !== undefined) {
        child.off('message', listener);
        resolve(reply[key]);
      }
    };
    child.on('message', listener);
    child.send(message);
  });
}

test(`${CLIENTS} clients get every update in order`, { timeout: 90000 }, async (t) => {
  const child = fork(path.join(__dirname, 'support', 'web_child.js'), [JSON.stringify({ window: WINDOW, queue: QUEUE })]);
  t.after(() => child.connected && child.send({ stop: true }));
  const [{ port }] = await once(child, 'message');
  const url = `ws://127.0.0.1:${port}/ws`;

  const clients = [];
  for (let batch = 0; batch < CLIENTS; batch += 100) {
    clients.push(...(await Promise.all(Array.from({ length: 100 }, () => connectClient(url)))));
  }
  const stalled = await connectStalledClient(port);
  t.after(() => stalled.destroy());
  assert.equal((await request(child, { stats: true }, 'stats')).clients, CLIENTS + 1);

  let complete = 0;
  const allReceived = new Promise((resolve) => {
    for (const client of clients) {
      client.ws.on('message', () => {
        if (client.sequences.length === BURST) {
          complete += 1;
          if (complete === CLIENTS) resolve();
        }
      });
    }
  });
  const started = Date.now();
  await request(child, { burst: BURST }, 'burstDone');
  await allReceived;
  const elapsed = Date.now() - started;

  const expected = Array.from({ length: BURST }, (_, i) => i + 1);
  const wrong = clients.filter((client) => client.sequences.length !== BURST || client.sequences.some((s, i) => s !== expected[i]));
  assert.equal(wrong.length, 0, `${wrong.length} clients missed updates or got them out of order`);
  assert.ok(clients.every((client) => client.closeCode === null), 'a fast client was closed');

  let stats = await request(child, { stats: true }, 'stats');
  assert.equal(stats.drops, 1, 'exactly the stalled client is dropped');
  stalled.resume();
  for (let i = 0; i < 200 && stats.clients !== CLIENTS; i += 1) {
    await sleep(25);
    stats = await request(child, { stats: true }, 'stats');
  }
  assert.equal(stats.clients, CLIENTS);
  t.diagnostic(`${CLIENTS * BURST} deliveries in ${elapsed} ms`);
  for (const client of clients) client.ws.terminate();
});
