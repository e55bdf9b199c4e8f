'use strict';
// A private OpenBao dev server for the tests: `bao server -dev -dev-tls`
// from ../.state/venv (OpenBao 2.7, in memory), on free loopback ports in
// 45000-45999, with HOME, the TLS files and a raw audit log in a temporary
// folder removed by stop(). configureRabbitMQ() sets up what the platform's
// launcher sets up for the dashboard: an AppRole with a periodic token and
// the rabbitmq secrets engine with short leases. auditedSecrets() returns
// every token, secret id and password that the server handed out.

const crypto = require('node:crypto');
const fs = require('node:fs');
const https = require('node:https');
const os = require('node:os');
const path = require('node:path');
const { spawn } = require('node:child_process');
const { freePorts } = require('./ports');

const BAO = path.resolve(__dirname, '..', '..', '..', '.state', 'venv', 'bin', 'bao');

function installed() {
  return fs.existsSync(BAO);
}

// What the dashboard's token may do, and nothing else.
function dashboardPolicy(credsPath) {
  return [
    `path "${credsPath}" { capabilities = ["read"] }`,
    'path "sys/leases/renew" { capabilities = ["update"] }',
    'path "sys/leases/lookup" { capabilities = ["update"] }',
    'path "auth/token/renew-self" { capabilities = ["update"] }',
    '',
  ].join('\n');
}

/**
 * Start the server and resolve to a handle once it responds to root:
 * {address, caCertPath, rootToken, api(), call(), configureRabbitMQ(),
 * wrappedSecretId(), auditedSecrets(), pause(), resume(), stop()}.
 * Resolves to null when bao is not installed.
 */
async function startOpenBao({ timeoutMs = 20000 } = {}) {
  if (!installed()) return null;
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'aiswa-dashboard-openbao-'));
  // The dev server's cluster listener takes the API port + 1.
  const [port] = await freePorts(2);
  const rootToken = crypto.randomBytes(16).toString('hex');
  const tlsDir = path.join(home, 'tls');
  fs.mkdirSync(tlsDir);
  const logFile = path.join(home, 'server.log');
  const auditFile = path.join(home, 'audit.log');
  const configFile = path.join(home, 'audit.hcl');
  // OpenBao 2.x accepts audit devices only from its configuration file.
  // log_raw keeps the secrets in clear, so the tests can look for them.
  fs.writeFileSync(
    configFile,
    `audit "file" "raw" {\n  options {\n    file_path = ${JSON.stringify(auditFile)}\n    log_raw = "true"\n  }\n}\n`,
  );
  const out = fs.openSync(logFile, 'a');
  const server = spawn(
    BAO,
    [
      'server',
      '-dev',
      '-dev-tls',
      `-dev-tls-cert-dir=${tlsDir}`,
      '-dev-no-store-token',
      `-dev-root-token-id=${rootToken}`,
      `-dev-listen-address=127.0.0.1:${port}`,
      `-config=${configFile}`,
    ],
    { env: { PATH: process.env.PATH, HOME: home }, stdio: ['ignore', out, out] },
  );
  const address = `https://127.0.0.1:${port}`;
  const caCertPath = path.join(tlsDir, 'vault-ca.pem');
  let agent = null;

  /** Call the HTTP API as root (or with `token`); resolves to {status, body}. */
  function api(method, apiPath, body, { token = rootToken, headers = {} } = {}) {
    agent = agent || new https.Agent({ ca: fs.readFileSync(caCertPath) });
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const request = https.request(
        `${address}/v1/${apiPath}`,
        {
          method,
          agent,
          timeout: 5000,
          headers: {
            'X-Vault-Token': token,
            ...(payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {}),
            ...headers,
          },
        },
        (response) => {
          const chunks = [];
          response.on('data', (chunk) => chunks.push(chunk));
          response.on('end', () => {
            const text = Buffer.concat(chunks).toString();
            resolve({ status: response.statusCode, body: text ? JSON.parse(text) : null });
          });
        },
      );
      request.on('timeout', () => request.destroy(new Error(`${method} ${apiPath} timed out`)));
      request.on('error', reject);
      request.end(payload);
    });
  }

  /** Like api(), but throws unless the status is 2xx. */
  async function call(method, apiPath, body, options) {
    const response = await api(method, apiPath, body, options);
    if (response.status < 200 || response.status > 299) {
      throw new Error(`${method} ${apiPath} returned HTTP ${response.status}: ${JSON.stringify(response.body)}`);
    }
    return response.body;
  }

  /**
   * Enable AppRole and the rabbitmq secrets engine against `broker` (a
   * startRabbitMQ({management: true}) handle). Leases last `leaseTtl`
   * seconds and at most `leaseMaxTtl`, tokens have the period `tokenPeriod`.
   */
  async function configureRabbitMQ(broker, { role = 'dashboard', leaseTtl = 4, leaseMaxTtl = 12, tokenPeriod = 6 } = {}) {
    const credsPath = `rabbitmq/creds/${role}`;
    await call('POST', 'sys/auth/approle', { type: 'approle' });
    await call('POST', 'sys/mounts/rabbitmq', { type: 'rabbitmq' });
    await call('POST', `sys/policies/acl/${role}`, { policy: dashboardPolicy(credsPath) });
    await call('POST', `auth/approle/role/${role}`, {
      token_policies: [role],
      token_no_default_policy: true,
      token_type: 'service',
      token_period: tokenPeriod,
      secret_id_num_uses: 1,
      secret_id_ttl: 120,
    });
    await call('POST', 'rabbitmq/config/connection', {
      connection_uri: broker.managementUrl,
      username: broker.username,
      password: broker.password,
      verify_connection: true,
    });
    await call('POST', 'rabbitmq/config/lease', { ttl: leaseTtl, max_ttl: leaseMaxTtl });
    const vhosts = { [broker.vhost]: { configure: '.*', write: '.*', read: '.*' } };
    await call('POST', `rabbitmq/roles/${role}`, { vhosts: JSON.stringify(vhosts) });
    const roleId = (await call('GET', `auth/approle/role/${role}/role-id`)).data.role_id;
    return { credsPath, roleId };
  }

  /** Mint a secret id for `role`, response-wrapped for `ttl`; resolves to the wrapping token. */
  async function wrappedSecretId(role = 'dashboard', ttl = '60s') {
    const body = await call('POST', `auth/approle/role/${role}/secret-id`, undefined, { headers: { 'X-Vault-Wrap-TTL': ttl } });
    return body.wrap_info.token;
  }

  /** Collect every client token, wrapping token, secret id and password in the audit log so far. */
  function auditedSecrets() {
    const secrets = new Set([rootToken]);
    const collect = (value, key) => {
      if (typeof value === 'string') {
        if (['client_token', 'token', 'secret_id', 'password'].includes(key) && value.length >= 8) secrets.add(value);
      } else if (value && typeof value === 'object') {
        for (const [name, child] of Object.entries(value)) collect(child, name);
      }
    };
    for (const line of fs.readFileSync(auditFile, 'utf8').split('\n')) {
      if (line) collect(JSON.parse(line), '');
    }
    return secrets;
  }

  async function stop() {
    agent?.destroy();
    if (server.exitCode === null && server.signalCode === null) {
      server.kill('SIGCONT');
      server.kill('SIGTERM');
      const timer = setTimeout(() => server.kill('SIGKILL'), 5000);
      await new Promise((resolve) => server.once('exit', resolve));
      clearTimeout(timer);
    }
    fs.closeSync(out);
    fs.rmSync(home, { recursive: true, force: true });
  }

  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline && server.exitCode === null) {
    try {
      if (fs.existsSync(caCertPath)) {
        const response = await api('GET', 'sys/health');
        if (response.status === 200) {
          return {
            address,
            caCertPath,
            rootToken,
            logFile,
            api,
            call,
            configureRabbitMQ,
            wrappedSecretId,
            auditedSecrets,
            pause: () => server.kill('SIGSTOP'),
            resume: () => server.kill('SIGCONT'),
            stop,
          };
        }
        last = `HTTP ${response.status}`;
      }
    } catch (error) {
      last = error.message;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  const tail = fs.readFileSync(logFile, 'utf8').split('\n').slice(-30).join('\n');
  await stop();
  throw new Error(`the test OpenBao did not respond within ${timeoutMs} ms (last error: ${last}):\n${tail}`);
}

module.exports = { startOpenBao, installed };
