'use strict';
// The dashboard process end to end against a private RabbitMQ. Events
// published on aiswa.events, also by the Python runtime's Broker, reach a
// gRPC subscriber and a WebSocket client. Malformed ones are skipped, the
// consumer survives a dropped connection, and SIGTERM stops it cleanly.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, execFile } = require('node:child_process');
const { once } = require('node:events');
const { setTimeout: sleep } = require('node:timers/promises');
const amqp = require('amqplib');
const grpc = require('@grpc/grpc-js');
const { startRabbitMQ, installed } = require('./support/rabbitmq');
const { freePorts } = require('./support/ports');
const { connectClient } = require('./support/clients');
const { loadProto } = require('../src/grpc');

const ROOT = path.resolve(__dirname, '..', '..');
const PYTHON = path.join(ROOT, '.state', 'venv', 'bin', 'python');
const proto = grpc.loadPackageDefinition(loadProto(path.join(ROOT, 'proto'))).aiswa.dashboard.v1;
const RUN = '1b4e28ba-2fa1-11d2-883f-0016d3cca427';
const PROJECT = '6fa459ea-ee8a-3ca4-894e-db77e160355e';
const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';

async function until(predicate, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function health(port) {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/healthz`);
    return { status: response.status, ...(await response.json()) };
  } catch {
    return { status: 0 };
  }
}

test('RabbitMQ events reach both transports', { skip: !installed() && 'rabbitmq-server is not installed (apt-get install rabbitmq-server)', timeout: 110000 }, async (t) => {
  const broker = await startRabbitMQ();
  t.after(() => broker.stop());
  const [grpcPort, httpPort, metricsPort] = await freePorts(3);
  const temp = fs.mkdtempSync(path.join(os.tmpdir(), 'aiswa-dashboard-test-'));
  t.after(() => fs.rmSync(temp, { recursive: true, force: true }));
  const traceFile = path.join(temp, 'spans.jsonl');
  const dashboard = spawn(process.execPath, [path.join(__dirname, '..', 'src', 'main.js')], {
    env: {
      PATH: process.env.PATH,
      AISWA_GRPC_ADDRESS: `127.0.0.1:${grpcPort}`,
      AISWA_HTTP_ADDRESS: `127.0.0.1:${httpPort}`,
      AISWA_METRICS_ADDRESS: `127.0.0.1:${metricsPort}`,
      AISWA_AMQP_URL: broker.url,
      AISWA_DASHBOARD_WATCH_QUEUES: 'dashboard.events,no.such.queue',
      AISWA_DASHBOARD_QUEUE_POLL_SECONDS: '0.3',
      AISWA_TRACE_EXPORTER: 'file',
      AISWA_TRACE_FILE: traceFile,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  const logs = [];
  let partial = '';
  dashboard.stderr.on('data', (chunk) => {
    const text = partial + chunk;
    const lines = text.split('\n');
    partial = lines.pop();
    for (const line of lines) if (line) logs.push(JSON.parse(line));
  });
  const exited = once(dashboard, 'exit');
  t.after(() => dashboard.exitCode === null && dashboard.kill('SIGKILL'));
  await until(async () => (await health(httpPort)).status === 200, 'the dashboard to consume');

  const client = new proto.DashboardService(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
  t.after(() => client.close());
  const call = client.SubscribeToUpdates({ metric_types: ['run_progress', 'breaker_state'] });
  const grpcUpdates = [];
  call.on('data', (update) => grpcUpdates.push(update));
  call.on('error', () => {});
  const web = await connectClient(`ws://127.0.0.1:${httpPort}/ws`, { keepUpdates: true });

  const connection = await amqp.connect(broker.url);
  t.after(() => connection.close().catch(() => {}));
  const channel = await connection.createConfirmChannel();
  const publish = (key, body, headers = {}) => {
    channel.publish('aiswa.events', key, Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)), {
      contentType: 'application/json', persistent: true, headers, messageId: `${key}-${Math.random()}`,
    });
  };
  publish('run.progress', '{"run_id": broken');
  publish('run.progress', [RUN]);
  publish('run.progress', { project_id: PROJECT, files_done: 1 });
  publish('run.queued', { run_id: RUN, project_id: PROJECT, state: 'queued' });
  publish('run.progress', { run_id: RUN, project_id: PROJECT, files_done: 2, files_total: 4 },
    { traceparent: `00-${TRACE_ID}-b7ad6b7169203331-01` });
  await channel.waitForConfirms();

  await until(() => grpcUpdates.length >= 2, 'two run updates over gRPC');
  assert.deepEqual(grpcUpdates.map((u) => [u.run.state, u.value]), [['RUN_STATE_QUEUED', 0], ['RUN_STATE_RUNNING', 0.5]]);
  await until(() => web.updates.filter((u) => u.metric_type === 'run_progress').length >= 2, 'two run updates over WebSocket');
  const skipped = logs.filter((line) => line.message === 'malformed event skipped');
  assert.equal(skipped.length, 3);
  assert.equal((await health(httpPort)).malformed_events, 3);
  assert.equal((await channel.checkQueue('dashboard.events')).messageCount, 0, 'malformed events are not requeued');
  // The queue poller reads the depth of the dashboard's own queue.
  await until(() => web.updates.find((u) => u.metric_type === 'queue_depth' && u.labels.queue === 'dashboard.events'), 'a queue_depth update');
  // The consumer span continues the publisher's trace.
  await until(() => fs.existsSync(traceFile) && fs.readFileSync(traceFile, 'utf8').includes(TRACE_ID), 'the consumer span');
  const span = fs.readFileSync(traceFile, 'utf8').trim().split('\n').map(JSON.parse).find((s) => s.context.trace_id === TRACE_ID);
  assert.equal(span.name, 'dashboard.events process');
  assert.equal(span.parent_id, 'b7ad6b7169203331');

  await t.test('Python runtime event arrives', { skip: !fs.existsSync(PYTHON) && 'no Python environment (make setup)' }, async () => {
    const script = [
      'import asyncio, os, sys',
      'from aiswa_runtime import Broker',
      'from aiswa_runtime._amqp import declare_topology',
      'async def main():',
      '    await declare_topology(os.environ["URL"])',
      '    broker = Broker(os.environ["URL"], "reflector")',
      '    await broker.connect(timeout=20)',
      `    await broker.publish("aiswa.events", "analysis.completed", {"run_id": "${RUN}", "project_id": "${PROJECT}", "summary": {"files": 4, "functions": 9}})`,
      '    await broker.publish("aiswa.events", "breaker.state_changed", {"service": "reflector", "upstream": "projects", "from": "closed", "to": "open"})',
      '    await broker.close()',
      'asyncio.run(main())',
    ].join('\n');
    await new Promise((resolve, reject) => {
      execFile(PYTHON, ['-c', script], { env: { URL: broker.url, AISWA_TOPOLOGY: path.join(ROOT, 'mesh', 'topology.yaml'), PATH: process.env.PATH }, cwd: ROOT },
        (error, _stdout, stderr) => (error ? reject(new Error(`${error.message}\n${stderr}`)) : resolve()));
    });
    await until(() => grpcUpdates.length >= 4, 'the Python events over gRPC');
    assert.deepEqual(grpcUpdates.slice(2).map((u) => [u.metric_type, u.value]), [['run_progress', 1], ['breaker_state', 2]]);
    assert.equal(grpcUpdates[2].run.state, 'RUN_STATE_COMPLETED');
    assert.equal(grpcUpdates[3].service, 'reflector');
    await until(() => web.updates.find((u) => u.metric_type === 'breaker_state' && u.labels.upstream === 'projects'), 'the breaker update over WebSocket');
  });

  await t.test('consumer reconnects after a drop', async () => {
    await broker.ctl('close_all_connections', '-p', broker.vhost, 'test: dropped on purpose');
    await until(async () => (await health(httpPort)).status === 200, 'the dashboard to reconnect', 20000);
    const again = await amqp.connect(broker.url);
    const confirm = await again.createConfirmChannel();
    const before = web.updates.length;
    confirm.publish('aiswa.events', 'run.progress', Buffer.from(JSON.stringify({ run_id: RUN, files_done: 3, files_total: 4 })));
    await confirm.waitForConfirms();
    await again.close();
    // The WebSocket client stays connected to the dashboard throughout.
    await until(() => web.updates.slice(before).find((u) => u.metric_type === 'run_progress' && u.value === 0.75), 'an event after the reconnection');
    assert.ok(logs.some((line) => line.message === 'RabbitMQ not reachable; retrying' && /CONNECTION-FORCED/.test(line.error)));
    assert.equal(logs.filter((line) => line.message === 'consuming events').length, 2);
  });

  dashboard.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0);
  assert.ok(logs.some((line) => line.message === 'service stopped'));
  assert.equal(await web.closed, 1001);
});
