'use strict';
// The dashboard process with short-lived RabbitMQ credentials from a private
// OpenBao dev server and a private RabbitMQ with the management plugin.
// Leases last 4 s and at most 12 s, and the token's period is 6 s. So in
// about half a minute the dashboard renews the lease and the token several
// times and replaces the credentials when the max TTL comes near. It also
// recovers from a revoked lease and keeps working while OpenBao does not
// respond. A publisher sends numbered events throughout, and every one must
// arrive.
// A second process exits when its token is revoked.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { once } = require('node:events');
const { setTimeout: sleep } = require('node:timers/promises');
const amqp = require('amqplib');
const { startRabbitMQ, installed: rabbitmqInstalled } = require('./support/rabbitmq');
const { startOpenBao, installed: openbaoInstalled } = require('./support/openbao');
const { freePorts } = require('./support/ports');
const { connectClient } = require('./support/clients');
const { readBootstrap, OpenBaoFatalError, leaseSuffix } = require('../src/openbao');

const LEASE_TTL_S = 4;
const LEASE_MAX_TTL_S = 12;
const TOKEN_PERIOD_S = 6;

const skip =
  (!rabbitmqInstalled() && 'rabbitmq-server is not installed (apt-get install rabbitmq-server)') ||
  (!openbaoInstalled() && 'bao is not installed in ../.state/venv (make setup)');

async function until(predicate, description, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${description}`);
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

/** Spawn src/main.js with the bootstrap message on file descriptor 3, a real pipe. */
function spawnDashboard(env, bootstrap) {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'src', 'main.js')], {
    env: { PATH: process.env.PATH, AISWA_OPENBAO_BOOTSTRAP_FD: '3', ...env },
    stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
  });
  child.stdio[3].end(JSON.stringify(bootstrap));
  const logs = [];
  let text = '';
  let partial = '';
  child.stderr.on('data', (chunk) => {
    text += chunk;
    const lines = (partial + chunk).split('\n');
    partial = lines.pop();
    for (const line of lines) if (line) logs.push({ ...JSON.parse(line), received_at: Date.now() });
  });
  return { child, logs, text: () => text, exited: once(child, 'exit') };
}

test('bootstrap message read and checked', () => {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'aiswa-dashboard-bootstrap-'));
  try {
    const file = path.join(folder, 'bootstrap.json');
    fs.writeFileSync(file, JSON.stringify({ role_id: 'role-1', wrapping_token: 'wrap-1' }));
    const fd = fs.openSync(file, 'r');
    assert.deepEqual(readBootstrap(fd), { roleId: 'role-1', wrappingToken: 'wrap-1' });
    assert.throws(() => fs.fstatSync(fd), { code: 'EBADF' }, 'the descriptor is closed after reading');

    fs.writeFileSync(file, '{"role_id": "role-1", "secret_id": "not-wrapped-secret"}');
    const invalid = fs.openSync(file, 'r');
    assert.throws(
      () => readBootstrap(invalid),
      (error) => error instanceof OpenBaoFatalError && /not a JSON object with the strings role_id and wrapping_token/.test(error.message) && !error.message.includes('not-wrapped-secret'),
    );
    assert.throws(() => readBootstrap(invalid), /reading AISWA_OPENBAO_BOOTSTRAP_FD=\d+ failed \(EBADF\)/);
  } finally {
    fs.rmSync(folder, { recursive: true, force: true });
  }
});

test('lease suffix is the last path segment', () => {
  assert.equal(leaseSuffix('rabbitmq/creds/dashboard/prf7sA06qyIFEqkZzk5cUOOY'), 'prf7sA06qyIFEqkZzk5cUOOY');
});

test('dashboard with OpenBao credentials', { skip, timeout: 120000 }, async (t) => {
  const [broker, bao] = await Promise.all([startRabbitMQ({ management: true }), startOpenBao()]);
  t.after(() => Promise.all([broker.stop(), bao.stop()]));
  const { credsPath, roleId } = await bao.configureRabbitMQ(broker, {
    leaseTtl: LEASE_TTL_S,
    leaseMaxTtl: LEASE_MAX_TTL_S,
    tokenPeriod: TOKEN_PERIOD_S,
  });
  const managementAuth = `Basic ${Buffer.from(`${broker.username}:${broker.password}`).toString('base64')}`;
  // The users of the dashboard's open connections, from the management API.
  const dashboardUsers = async () => {
    const response = await fetch(`${broker.managementUrl}/api/connections`, { headers: { authorization: managementAuth } });
    const connections = await response.json();
    return connections.filter((c) => c.client_properties?.connection_name === 'dashboard').map((c) => c.user);
  };

  const [grpcPort, httpPort] = await freePorts(2);
  const env = {
    AISWA_GRPC_ADDRESS: `127.0.0.1:${grpcPort}`,
    AISWA_HTTP_ADDRESS: `127.0.0.1:${httpPort}`,
    AISWA_AMQP_URL: `amqp://127.0.0.1:${broker.amqpPort}/${broker.vhost}`,
    AISWA_AMQP_CREDS: credsPath,
    AISWA_OPENBAO_ADDR: bao.address,
    AISWA_OPENBAO_CACERT: bao.caCertPath,
    AISWA_OPENBAO_TIMEOUT: '0.5',
    AISWA_LOG_LEVEL: 'DEBUG',
  };
  const wrappingToken = await bao.wrappedSecretId();
  const dashboard = spawnDashboard(env, { role_id: roleId, wrapping_token: wrappingToken });
  t.after(() => dashboard.child.exitCode === null && dashboard.child.kill('SIGKILL'));
  const logged = (message, since = 0) => dashboard.logs.filter((line) => line.message === message && line.received_at >= since);
  await until(async () => (await health(httpPort)).status === 200, 'the dashboard to consume');
  assert.equal(logged('logged in to OpenBao with AppRole').length, 1);
  const firstUser = logged('RabbitMQ credentials obtained')[0].user;
  assert.equal(logged('consuming events')[0].user, firstUser);

  let reused = null;
  await t.test('wrapping token used twice', async () => {
    reused = spawnDashboard({ ...env, AISWA_GRPC_ADDRESS: '127.0.0.1:0', AISWA_HTTP_ADDRESS: '127.0.0.1:0' }, { role_id: roleId, wrapping_token: wrappingToken });
    const [code] = await reused.exited;
    assert.equal(code, 1);
    const failure = reused.logs.find((line) => line.message === 'dashboard failed to start');
    assert.ok(failure, reused.text());
    assert.match(failure.err.message, /the wrapping token was already used or has expired, so the secret id may have been intercepted/);
    assert.match(failure.err.message, /supervisor must restart the dashboard/);
  });

  const receivedAt = new Map();
  const duplicates = [];
  // Connected before the first event is published, so that it receives every one.
  await connectClient(`ws://127.0.0.1:${httpPort}/ws`, {
    onUpdate: (update) => {
      if (update.event !== 'test.tick') return;
      const seq = Number(update.labels.seq);
      if (receivedAt.has(seq)) duplicates.push(seq);
      else receivedAt.set(seq, Date.now());
    },
  });
  // Numbered events, published every 20 ms with confirms until stopped.
  const publisher = await amqp.connect(broker.url);
  t.after(() => publisher.close().catch(() => {}));
  const channel = await publisher.createConfirmChannel();
  const confirmed = [];
  const publishedAt = new Map();
  let publishing = true;
  const publishLoop = (async () => {
    for (let seq = 0; publishing; seq += 1) {
      publishedAt.set(seq, Date.now());
      channel.publish('aiswa.events', 'test.tick', Buffer.from(JSON.stringify({ seq })), { persistent: true, contentType: 'application/json' });
      await channel.waitForConfirms();
      confirmed.push(seq);
      await sleep(20);
    }
  })();
  const lastReceived = () => Math.max(-1, ...receivedAt.keys());
  // True once an event published after `since` arrived.
  const eventAfter = (since) => [...receivedAt.keys()].some((seq) => publishedAt.get(seq) > since);

  await t.test('renewals and a replacement', async () => {
    await until(() => logged('RabbitMQ credentials replaced').length >= 1, 'a replacement at the max TTL', (LEASE_MAX_TTL_S + 6) * 1000);
    const replaced = logged('RabbitMQ credentials replaced')[0];
    assert.equal(replaced.reason, 'max TTL reached');
    assert.ok(logged('RabbitMQ credentials lease renewed').length >= 3, 'the lease is renewed several times first');
    assert.ok(logged('OpenBao token renewed').length >= 2, 'the token is renewed meanwhile');
    await until(() => logged('closed the RabbitMQ connection of the replaced credentials').length >= 1, 'the old connection to close');
    assert.notEqual(replaced.user, firstUser);
    // The management API lists a connection about 5 s after it opened.
    await until(async () => {
      const users = await dashboardUsers();
      return users.length === 1 && users[0] === replaced.user;
    }, 'the management API to list only the new user', 10000);
    const since = Date.now();
    await until(() => eventAfter(since), 'an event after the replacement');
  });

  await t.test('revoked lease replaced quickly', async () => {
    const current = logged('RabbitMQ credentials replaced').at(-1);
    const revokedAt = Date.now();
    await bao.call('PUT', 'sys/leases/revoke', { lease_id: `${credsPath}/${current.lease}` });
    const replaced = await until(
      () => logged('RabbitMQ credentials replaced', revokedAt).find((line) => line.previous_lease === current.lease),
      'a replacement of the revoked lease',
    );
    await until(() => eventAfter(revokedAt), 'an event published after the revocation');
    const resumedMs = Date.now() - revokedAt;
    assert.ok(resumedMs < 3000, `consumption resumed ${resumedMs} ms after the revocation; the bound is 3000 ms`);
    const lost = logged('RabbitMQ not reachable; retrying', revokedAt).find((line) => /user '.*' is deleted/.test(line.error));
    assert.ok(lost, 'RabbitMQ closed the connection of the deleted user');
    // The lost connection makes the dashboard look the lease up at once. A
    // renewal may have found the lease gone first; then the lookup finds the new one.
    if (replaced.reason !== 'lease gone after the connection was lost') {
      assert.equal(replaced.reason, 'lease renewal rejected');
      assert.ok(logged('RabbitMQ credentials lease still valid after the connection was lost', revokedAt).length >= 1);
    }
  });

  await t.test('OpenBao paused for a while', async () => {
    // Start right after a renewal to the full TTL, so the lease outlives the pause.
    const since = Date.now();
    const fresh = await until(
      () => logged('RabbitMQ credentials lease renewed', since).find((line) => line.ttl_s === LEASE_TTL_S),
      'a renewal to the full TTL',
    );
    const pauseMs = 2200;
    assert.ok(pauseMs > (LEASE_TTL_S * 1000) / 3, 'the pause is longer than a renewal interval');
    const pausedAt = Date.now();
    assert.ok(pausedAt - fresh.received_at + pauseMs < LEASE_TTL_S * 1000 - 1000, 'the lease outlives the pause');
    bao.pause();
    let resumedAt;
    try {
      await sleep(pauseMs);
      assert.ok(eventAfter(pausedAt + 500), 'events published during the pause arrive during the pause');
      assert.ok(logged('RabbitMQ credentials lease renewal failed; retrying', pausedAt).length >= 1, 'renewal is retried');
    } finally {
      bao.resume();
      resumedAt = Date.now();
    }
    const renewed = await until(() => logged('RabbitMQ credentials lease renewed', resumedAt)[0], 'a renewal after the pause', 3000);
    assert.equal(renewed.lease, fresh.lease, 'the lease from before the pause is renewed');
    assert.equal((await health(httpPort)).status, 200);
  });

  await t.test('no event lost', async () => {
    publishing = false;
    await publishLoop;
    const last = confirmed.at(-1);
    await until(() => lastReceived() >= last && receivedAt.size === confirmed.length, `all ${confirmed.length} events`, 10000).catch(() => {});
    const missing = confirmed.filter((seq) => !receivedAt.has(seq));
    assert.deepEqual(missing, [], `${missing.length} of ${confirmed.length} events were lost`);
    t.diagnostic(`${confirmed.length} events, ${duplicates.length} delivered twice`);
  });

  await t.test('SIGTERM stops cleanly', async () => {
    dashboard.child.kill('SIGTERM');
    const [code] = await dashboard.exited;
    assert.equal(code, 0);
  });

  let revoked = null;
  await t.test('revoked token ends the process', async () => {
    const [grpc, http] = await freePorts(2);
    revoked = spawnDashboard(
      { ...env, AISWA_GRPC_ADDRESS: `127.0.0.1:${grpc}`, AISWA_HTTP_ADDRESS: `127.0.0.1:${http}` },
      { role_id: roleId, wrapping_token: await bao.wrappedSecretId() },
    );
    t.after(() => revoked.child.exitCode === null && revoked.child.kill('SIGKILL'));
    await until(async () => (await health(http)).status === 200, 'the new dashboard to consume');
    // The root token is the only other token of the dev server.
    const rootAccessor = (await bao.call('GET', 'auth/token/lookup-self')).data.accessor;
    const { keys } = (await bao.call('GET', 'auth/token/accessors?list=true')).data;
    for (const accessor of keys.filter((key) => key !== rootAccessor)) {
      await bao.call('POST', 'auth/token/revoke-accessor', { accessor });
    }
    const revokedAt = Date.now();
    const [code] = await revoked.exited;
    assert.equal(code, 1);
    const exitMs = Date.now() - revokedAt;
    assert.ok(exitMs < (TOKEN_PERIOD_S * 1000) / 3 + 3000, `the dashboard exited ${exitMs} ms after the revocation`);
    const fatal = revoked.logs.find((line) => line.message === 'OpenBao credentials lost; exiting so that the supervisor restarts the dashboard');
    assert.ok(fatal, revoked.text());
    assert.match(fatal.err.message, /OpenBao rejected the dashboard's token|renewing the OpenBao token failed/);
  });

  await t.test('no secret in the logs', async () => {
    const secrets = bao.auditedSecrets();
    assert.ok(secrets.size >= 6, `the audit log has ${secrets.size} secrets`);
    const text = [dashboard, reused, revoked].map((spawned) => spawned?.text() ?? '').join('');
    for (const secret of secrets) assert.ok(!text.includes(secret), `a secret of ${secret.length} characters is in the logs`);
  });
});
