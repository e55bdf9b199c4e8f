'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { createHttpServer, createMetricsServer, listen, DIST } = require('../src/http');
const { Metrics } = require('../src/metrics');
const { captureLogger } = require('./support/logs');

async function serve(server, t) {
  const port = await listen(server, { host: '127.0.0.1', port: 0 });
  t.after(() => server.close());
  return `http://127.0.0.1:${port}`;
}

test('page, bundle and security headers', { skip: !fs.existsSync(path.join(DIST, 'app.js')) && 'run `npm run build` first' }, async (t) => {
  const base = await serve(createHttpServer({ health: () => ({ ok: true }), log: captureLogger().log }), t);
  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-security-policy'), /default-src 'self'/);
  assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
  const html = await page.text();
  for (const id of ['runs', 'queue-chart', 'services', 'breakers', 'denials', 'events']) assert.ok(html.includes(`id="${id}"`), id);
  const script = await fetch(`${base}/app.js`);
  assert.equal(script.headers.get('content-type'), 'text/javascript; charset=utf-8');
  const source = await script.text();
  assert.ok(source.includes('Chart.js'), 'Chart.js is bundled with its licence notice');
  assert.equal((await fetch(`${base}/app.css`)).status, 200);
});

test('healthz status and other routes', async (t) => {
  let ok = false;
  const base = await serve(createHttpServer({ health: () => ({ ok, amqp: ok ? 'consuming' : 'disconnected' }), log: captureLogger().log }), t);
  let reply = await fetch(`${base}/healthz`);
  assert.equal(reply.status, 503);
  assert.deepEqual(await reply.json(), { ok: false, amqp: 'disconnected' });
  ok = true;
  reply = await fetch(`${base}/healthz`);
  assert.equal(reply.status, 200);
  assert.equal((await fetch(`${base}/etc/passwd`)).status, 404);
  assert.equal((await fetch(`${base}/../package.json`)).status, 404);
  assert.equal((await fetch(`${base}/`, { method: 'POST', body: 'x' })).status, 405);
});

test('missing build names the fix', async (t) => {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'aiswa-dashboard-dist-'));
  t.after(() => fs.rmSync(empty, { recursive: true }));
  const logs = captureLogger();
  const base = await serve(createHttpServer({ health: () => ({ ok: true }), log: logs.log, dist: empty }), t);
  const reply = await fetch(`${base}/app.js`);
  assert.equal(reply.status, 503);
  assert.match(await reply.text(), /npm run build/);
  assert.equal(logs.find('the page is not built; run `npm run build` in dashboard-node').length, 1);
});

test('/metrics serves the Prometheus text format', async (t) => {
  const metrics = new Metrics();
  metrics.inc('aiswa_dashboard_events_total', { outcome: 'malformed' }, 3);
  metrics.gauge('aiswa_breaker_state', { upstream: 'rabbitmq' }, 2);
  const base = await serve(createMetricsServer(metrics), t);
  const text = await (await fetch(`${base}/metrics`)).text();
  assert.match(text, /# TYPE aiswa_dashboard_events_total counter\naiswa_dashboard_events_total\{outcome="malformed"\} 3/);
  assert.match(text, /aiswa_breaker_state\{upstream="rabbitmq"\} 2/);
  assert.match(text, /process_resident_memory_bytes \d+/);
});
