'use strict';
// A private RabbitMQ node for the tests: Debian's rabbitmq-server, its own
// epmd, ports in 45000-45999, data and logs in a temporary folder, removed
// by stop(). Never the platform's broker (mesh/topology.yaml).

const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const amqp = require('amqplib');
const { freePorts } = require('./ports');

const BIN = '/usr/lib/rabbitmq/bin';

function installed() {
  return fs.existsSync(path.join(BIN, 'rabbitmq-server'));
}

function exited(child) {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    else child.once('exit', () => resolve());
  });
}

async function killGroup(child, graceMs) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  try {
    process.kill(-child.pid, 'SIGTERM');
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }, graceMs);
  await exited(child);
  clearTimeout(timer);
}

function ctl(env, args) {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(BIN, 'rabbitmqctl'), ['-q', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => { output += chunk; });
    child.stderr.on('data', (chunk) => { output += chunk; });
    child.on('exit', (code) => (code === 0 ? resolve(output) : reject(new Error(`rabbitmqctl ${args[0]} failed (${code}): ${output.trim()}`))));
  });
}

// Throws unless the management API responds. Its listener starts after the AMQP one.
async function checkManagement(managementUrl, password) {
  const authorization = `Basic ${Buffer.from(`dashboard-test:${password}`).toString('base64')}`;
  const response = await fetch(`${managementUrl}/api/overview`, { headers: { authorization } });
  if (!response.ok) throw new Error(`management API returned HTTP ${response.status}`);
}

/**
 * Start the node and resolve to {url, vhost, stop()} once it accepts AMQP
 * connections. Resolves to null when rabbitmq-server is not installed.
 * With `management`, the management plugin's HTTP API listens on
 * `managementUrl` (127.0.0.1 and a free port), and the default user
 * (`username`, `password`, an administrator) can use it.
 */
async function startRabbitMQ({ timeoutMs = 90000, management = false } = {}) {
  if (!installed()) return null;
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'aiswa-dashboard-rabbitmq-'));
  const [amqpPort, distPort, epmdPort, managementPort] = await freePorts(4);
  const [ctlMin] = await freePorts(11);
  const password = crypto.randomBytes(12).toString('hex');
  const vhost = 'aiswa';
  fs.mkdirSync(path.join(home, 'mnesia'));
  fs.mkdirSync(path.join(home, 'log'));
  fs.writeFileSync(path.join(home, '.erlang.cookie'), crypto.randomBytes(16).toString('hex').toUpperCase(), { mode: 0o400 });
  fs.writeFileSync(
    path.join(home, 'rabbitmq.conf'),
    [
      `listeners.tcp.default = 127.0.0.1:${amqpPort}`,
      'loopback_users = none',
      'default_user = dashboard-test',
      `default_pass = ${password}`,
      `default_vhost = ${vhost}`,
      'default_permissions.configure = .*',
      'default_permissions.read = .*',
      'default_permissions.write = .*',
      'default_user_tags.administrator = true',
      ...(management ? ['management.tcp.ip = 127.0.0.1', `management.tcp.port = ${managementPort}`] : []),
      '',
    ].join('\n'),
  );
  fs.writeFileSync(path.join(home, 'advanced.config'), '[].\n');
  fs.writeFileSync(path.join(home, 'enabled_plugins'), management ? '[rabbitmq_management].\n' : '[].\n');
  fs.writeFileSync(path.join(home, 'rabbitmq-env.conf'), '');
  const env = {
    PATH: process.env.PATH,
    HOME: home,
    RABBITMQ_NODENAME: `dashboard-test-${process.pid}-${amqpPort}@localhost`,
    RABBITMQ_NODE_IP_ADDRESS: '127.0.0.1',
    RABBITMQ_NODE_PORT: String(amqpPort),
    RABBITMQ_DIST_PORT: String(distPort),
    ERL_EPMD_PORT: String(epmdPort),
    ERL_EPMD_ADDRESS: '127.0.0.1',
    RABBITMQ_MNESIA_BASE: path.join(home, 'mnesia'),
    RABBITMQ_LOG_BASE: path.join(home, 'log'),
    RABBITMQ_LOGS: '-',
    RABBITMQ_PID_FILE: path.join(home, 'rabbitmq.pid'),
    RABBITMQ_CONFIG_FILE: path.join(home, 'rabbitmq'),
    RABBITMQ_ADVANCED_CONFIG_FILE: path.join(home, 'advanced.config'),
    RABBITMQ_ENABLED_PLUGINS_FILE: path.join(home, 'enabled_plugins'),
    RABBITMQ_CONF_ENV_FILE: path.join(home, 'rabbitmq-env.conf'),
    RABBITMQ_CTL_DIST_PORT_MIN: String(ctlMin),
    RABBITMQ_CTL_DIST_PORT_MAX: String(ctlMin + 10),
    // Keep Erlang distribution on loopback too.
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS: '-kernel inet_dist_use_interface {127,0,0,1}',
  };
  const logFile = path.join(home, 'server.log');
  const out = fs.openSync(logFile, 'a');
  // Its own epmd first, so that the Erlang VM does not start a shared one.
  const epmd = spawn('epmd', ['-port', String(epmdPort), '-address', '127.0.0.1'], {
    env, detached: true, stdio: ['ignore', out, out],
  });
  const server = spawn(path.join(BIN, 'rabbitmq-server'), [], { env, detached: true, stdio: ['ignore', out, out] });
  const url = `amqp://dashboard-test:${password}@127.0.0.1:${amqpPort}/${vhost}`;

  async function stop() {
    await killGroup(server, 20000);
    await killGroup(epmd, 5000);
    fs.closeSync(out);
    fs.rmSync(home, { recursive: true, force: true });
  }

  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (server.exitCode !== null) break;
    try {
      const connection = await amqp.connect(url, { timeout: 2000 });
      // The platform's launcher declares the exchanges before any service
      // starts, and the dashboard only checks that aiswa.events exists.
      const channel = await connection.createChannel();
      await channel.assertExchange('aiswa.events', 'topic', { durable: true });
      await channel.assertExchange('aiswa.dlx', 'direct', { durable: true });
      await connection.close();
      const node = { url, vhost, amqpPort, stop, logFile, ctl: (...args) => ctl(env, args) };
      if (!management) return node;
      const managementUrl = `http://127.0.0.1:${managementPort}`;
      await checkManagement(managementUrl, password);
      return { ...node, username: 'dashboard-test', password, managementUrl };
    } catch (error) {
      last = error.message;
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
  }
  const tail = fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n');
  await stop();
  throw new Error(`the test RabbitMQ did not accept connections within ${timeoutMs} ms (last error: ${last}):\n${tail}`);
}

module.exports = { startRabbitMQ, installed };
