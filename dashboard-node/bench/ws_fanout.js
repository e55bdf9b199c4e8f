'use strict';
// Benchmark: delay from publish (to RabbitMQ) to receipt at 1000 WebSocket
// clients, and the dashboard's memory per connection.
//
//   node bench/ws_fanout.js [--clients 1000] [--events 400] [--rate 20]
//
// Starts a private RabbitMQ (ports 45000-45999) and the dashboard process,
// connects the clients from this process, publishes `events` events at
// `rate` per second with their send time in the body, and writes the
// figures to ../.state/bench/dashboard.json. Needs Debian's rabbitmq-server.

const fs = require('node:fs');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { performance } = require('node:perf_hooks');
const { setTimeout: sleep } = require('node:timers/promises');
const amqp = require('amqplib');
const { startRabbitMQ, installed } = require('../test/support/rabbitmq');
const { freePorts } = require('../test/support/ports');
const { connectClient } = require('../test/support/clients');

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index > 0 ? Number(process.argv[index + 1]) : fallback;
}

const CLIENTS = option('clients', 1000);
const EVENTS = option('events', 400);
const RATE = option('rate', 20);
const OUTPUT = path.resolve(__dirname, '..', '..', '.state', 'bench', 'dashboard.json');

const now = () => (performance.timeOrigin + performance.now()) / 1000;

function rssBytes(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]) * 1024;
}

// User plus system CPU seconds of a process, from /proc/<pid>/stat.
function cpuSeconds(pid) {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function until(predicate, what, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

async function main() {
  if (!installed()) throw new Error('rabbitmq-server is not installed; apt-get install rabbitmq-server');
  const broker = await startRabbitMQ();
  const [grpcPort, httpPort] = await freePorts(2);
  const dashboard = spawn(process.execPath, [path.join(__dirname, '..', 'src', 'main.js')], {
    env: {
      PATH: process.env.PATH,
      AISWA_GRPC_ADDRESS: `127.0.0.1:${grpcPort}`,
      AISWA_HTTP_ADDRESS: `127.0.0.1:${httpPort}`,
      AISWA_AMQP_URL: broker.url,
      AISWA_LOG_LEVEL: 'WARNING',
    },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  try {
    await until(async () => {
      try {
        return (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).ok;
      } catch {
        return false;
      }
    }, 'the dashboard', 30000);
    await sleep(500);
    const rssIdle = rssBytes(dashboard.pid);

    const delays = new Float64Array(CLIENTS * EVENTS);
    let received = 0;
    const onUpdate = (update) => {
      if (update.event !== 'bench.tick') return;
      delays[received] = (now() - Number(update.labels.sent_at)) * 1000;
      received += 1;
    };
    const clients = [];
    for (let i = 0; i < CLIENTS; i += 100) {
      const batch = Math.min(100, CLIENTS - i);
      clients.push(...(await Promise.all(Array.from({ length: batch }, () => connectClient(`ws://127.0.0.1:${httpPort}/ws`, { onUpdate })))));
    }
    await sleep(1000);
    const rssConnected = rssBytes(dashboard.pid);

    const connection = await amqp.connect(broker.url);
    const channel = await connection.createConfirmChannel();
    const started = now();
    const serverCpuBefore = cpuSeconds(dashboard.pid);
    const clientCpuBefore = process.cpuUsage();
    for (let i = 0; i < EVENTS; i += 1) {
      const due = started + i / RATE;
      const wait = (due - now()) * 1000;
      if (wait > 0) await sleep(wait);
      channel.publish('aiswa.events', 'bench.tick', Buffer.from(JSON.stringify({ n: i, sent_at: now().toFixed(6) })), { contentType: 'application/json' });
    }
    await channel.waitForConfirms();
    await until(() => received === CLIENTS * EVENTS, `${CLIENTS * EVENTS} deliveries (have ${received})`, 60000).catch((error) => {
      process.stderr.write(`bench: ${error.message}\n`);
    });
    const elapsed = now() - started;
    const serverCpu = cpuSeconds(dashboard.pid) - serverCpuBefore;
    const clientUsage = process.cpuUsage(clientCpuBefore);
    const clientCpu = (clientUsage.user + clientUsage.system) / 1e6;
    const rssAfter = rssBytes(dashboard.pid);
    const health = await (await fetch(`http://127.0.0.1:${httpPort}/healthz`)).json();
    await connection.close();
    for (const client of clients) client.ws.terminate();

    const sorted = Array.from(delays.subarray(0, received)).sort((a, b) => a - b);
    const result = {
      benchmark: 'dashboard WebSocket fan-out, publish to RabbitMQ -> receipt at every client',
      date: new Date().toISOString(),
      node: process.version,
      cpus: require('node:os').availableParallelism(),
      load_average: require('node:os').loadavg().map((value) => Number(value.toFixed(2))),
      clients: CLIENTS,
      events: EVENTS,
      rate_per_second: RATE,
      deliveries_expected: CLIENTS * EVENTS,
      deliveries_received: received,
      dropped_clients: health.dropped_clients,
      seconds: Number(elapsed.toFixed(2)),
      cpu_seconds: { dashboard: Number(serverCpu.toFixed(2)), clients: Number(clientCpu.toFixed(2)) },
      dashboard_cpu_us_per_delivery: Number(((serverCpu * 1e6) / Math.max(received, 1)).toFixed(2)),
      delay_ms: {
        p50: Number(percentile(sorted, 50).toFixed(2)),
        p90: Number(percentile(sorted, 90).toFixed(2)),
        p99: Number(percentile(sorted, 99).toFixed(2)),
        max: Number(sorted[sorted.length - 1].toFixed(2)),
      },
      memory: {
        rss_idle_bytes: rssIdle,
        rss_connected_bytes: rssConnected,
        rss_after_bytes: rssAfter,
        bytes_per_connection: Math.round((rssConnected - rssIdle) / CLIENTS),
      },
    };
    fs.mkdirSync(path.dirname(OUTPUT), { recursive: true });
    fs.writeFileSync(OUTPUT, `${JSON.stringify(result, null, 2)}\n`);
    const rows = [
      ['clients', CLIENTS],
      ['events (at /s)', `${EVENTS} (${RATE})`],
      ['deliveries', `${received} of ${CLIENTS * EVENTS}`],
      ['dropped clients', health.dropped_clients],
      ['delay p50 (ms)', result.delay_ms.p50],
      ['delay p90 (ms)', result.delay_ms.p90],
      ['delay p99 (ms)', result.delay_ms.p99],
      ['delay max (ms)', result.delay_ms.max],
      ['dashboard CPU (s)', `${result.cpu_seconds.dashboard} (${result.dashboard_cpu_us_per_delivery} us per delivery)`],
      ['clients CPU (s)', result.cpu_seconds.clients],
      ['RSS idle (MiB)', (rssIdle / 2 ** 20).toFixed(1)],
      ['RSS with clients (MiB)', (rssConnected / 2 ** 20).toFixed(1)],
      ['memory per connection (KiB)', (result.memory.bytes_per_connection / 1024).toFixed(1)],
      ['load average (1 min)', `${result.load_average[0]} on ${result.cpus} cores`],
    ];
    const width = Math.max(...rows.map(([name]) => name.length));
    process.stdout.write(`${rows.map(([name, value]) => `${name.padEnd(width)}  ${value}`).join('\n')}\nwritten to ${OUTPUT}\n`);
  } finally {
    dashboard.kill('SIGTERM');
    await new Promise((resolve) => dashboard.once('exit', resolve));
    await broker.stop();
  }
}

main().catch((error) => {
  process.stderr.write(`bench: ${error.stack}\n`);
  process.exit(1);
});
