'use strict';
// Browser tests of the dashboard page in headless Chromium (Debian's chromium
// through playwright-core, which never downloads a browser):
//
// - against the running platform (`make up`): the page is opened, the test
//   starts an analysis through the gateway, and the page must show that run
//   reach "completed" without a reload. The screenshot goes to
//   .state/artifacts/dashboard-e2e.png, on success and on failure.
// - against a private dashboard web server on a free loopback port: run events
//   that arrive out of order must not move a completed run back on the page,
//   a chart draws no axes until its first sample arrives, and a series with a
//   single sample shows it as a point.
//
//   node --test dashboard-node/test/e2e/browser.e2e.js      (from the repository root)
//
// AISWA_E2E_GATEWAY, AISWA_E2E_DASHBOARD and AISWA_E2E_CHROMIUM override the
// gateway URL, the page URL and the browser.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const http = require('node:http');
const https = require('node:https');
const { execFileSync } = require('node:child_process');
const { chromium } = require('playwright-core');
const { decodeEvent } = require('../../src/events');
const { startWeb } = require('../support/web');

const dashboardDir = path.resolve(__dirname, '..', '..');
const repo = path.resolve(dashboardDir, '..');
const stateDir = path.join(repo, '.state');
const gatewayUrl = new URL(process.env.AISWA_E2E_GATEWAY || 'https://127.0.0.1:8443');
const dashboardUrl = new URL(process.env.AISWA_E2E_DASHBOARD || 'http://127.0.0.1:58080/');
const chromiumPath = process.env.AISWA_E2E_CHROMIUM || '/usr/bin/chromium';
const caFile = path.join(stateDir, 'pki', 'gateway-ca.pem');
const apiKeyFile = path.join(stateDir, 'secrets', 'admin-api-key');
const screenshotFile = path.join(stateDir, 'artifacts', 'dashboard-e2e.png');

const REQUEST_TIMEOUT_MS = 15_000;
const COMPLETED_TIMEOUT_MS = 60_000;
const START_HINT = 'start the platform with `make up` and run this test again';

// These flags turn off Chromium's background calls to other hosts (updates,
// sync, QUIC probes, first-run pages), because the test reaches only loopback.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

// The platform's own pod range, when `make up` created pods (aiswa_mesh/pods.py
// records it); the dashboard's page is then on its pod's address.
function podRange() {
  try {
    const state = JSON.parse(fs.readFileSync(path.join(stateDir, 'run', 'pods-aiswa0.json'), 'utf8'));
    const [network, bits] = state.cidr.split('/');
    return { network: ipv4(network), bits: Number(bits) };
  } catch {
    return null;
  }
}

function ipv4(text) {
  const parts = text.split('.').map(Number);
  if (parts.length !== 4 || parts.some((part) => !Number.isInteger(part) || part < 0 || part > 255)) return null;
  return parts.reduce((value, part) => value * 256 + part, 0);
}

function inPodRange(hostname) {
  const range = podRange();
  const address = ipv4(hostname);
  if (range === null || address === null) return false;
  const size = 2 ** (32 - range.bits);
  return Math.floor(address / size) === Math.floor(range.network / size);
}

for (const url of [gatewayUrl, dashboardUrl]) {
  if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname) && !inPodRange(url.hostname)) {
    throw new Error(`${url} is neither a loopback address nor in the platform's pod range; ` +
      'this test sends traffic only to those');
  }
}

/** Send one HTTP(S) request. Resolves to {status, text} and rejects on a network error or timeout. */
function request(url, { method = 'GET', headers = {}, body, ca } = {}) {
  const client = url.protocol === 'https:' ? https : http;
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = client.request(url, {
      method,
      ca,
      timeout: REQUEST_TIMEOUT_MS,
      headers: {
        ...headers,
        ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
      },
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out after ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.on('response', (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => resolve({ status: res.statusCode, text: Buffer.concat(chunks).toString() }));
    });
    req.end(payload);
  });
}

/** Fail with a message that names what is missing when the platform is not running. */
async function requirePlatform() {
  for (const file of [caFile, apiKeyFile]) {
    if (!fs.existsSync(file)) {
      assert.fail(`${file} is missing: the platform has not been set up here; ${START_HINT}`);
    }
  }
  const probes = [
    ['gateway', new URL('/.well-known/jwks.json', gatewayUrl), { ca: fs.readFileSync(caFile) }],
    ['dashboard', new URL('/healthz', dashboardUrl), {}],
  ];
  for (const [name, url, options] of probes) {
    let response;
    try {
      response = await request(url, options);
    } catch (error) {
      assert.fail(`the ${name} at ${url.origin} is not reachable (${error.code || error.message}); ${START_HINT}`);
    }
    if (response.status !== 200) {
      assert.fail(`the ${name} answered ${url.pathname} with HTTP ${response.status}: ${response.text.slice(0, 300)}`);
    }
  }
}

/** The REST API behind the gateway, with the bearer token from the admin API key. */
class Gateway {
  constructor() {
    this.ca = fs.readFileSync(caFile);
    this.token = null;
  }

  async call(method, pathname, body) {
    const headers = this.token ? { authorization: `Bearer ${this.token}` } : {};
    const response = await request(new URL(pathname, gatewayUrl), { method, headers, body, ca: this.ca });
    if (response.status !== 200) {
      assert.fail(`${method} ${pathname} returned HTTP ${response.status}: ${response.text.slice(0, 500)}`);
    }
    return JSON.parse(response.text);
  }

  async login() {
    const apiKey = fs.readFileSync(apiKeyFile, 'utf8').trim();
    const { access_token: token } = await this.call('POST', '/v1/auth/token', { api_key: apiKey });
    assert.ok(token, 'POST /v1/auth/token returned no access_token');
    this.token = token;
  }
}

/** Pack a standard-library package of this machine's Python as a tar.gz, and count its .py files. */
function packPythonPackage(name) {
  const directory = execFileSync('python3', ['-c', `import ${name}, os; print(os.path.dirname(${name}.__file__))`], {
    encoding: 'utf8',
  }).trim();
  const sources = fs
    .readdirSync(directory, { recursive: true })
    .filter((file) => file.endsWith('.py') && !file.split(path.sep).includes('__pycache__'));
  const archive = execFileSync('tar', ['-czf', '-', '--exclude=__pycache__', '-C', path.dirname(directory), name], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return { directory, archive, pythonFiles: sources.length };
}

/** Start Chromium with a fresh profile folder; `close()` ends it and deletes the folder. */
async function launchBrowser() {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'aiswa-e2e-chromium-'));
  try {
    // launchPersistentContext passes the profile folder as --user-data-dir.
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumPath,
      headless: true,
      args: CHROMIUM_ARGS,
      viewport: { width: 1280, height: 900 },
      timeout: 30_000,
    });
    const page = context.pages()[0] || (await context.newPage());
    return {
      page,
      async close() {
        await context.close();
        fs.rmSync(profile, { recursive: true, force: true });
      },
    };
  } catch (error) {
    fs.rmSync(profile, { recursive: true, force: true });
    throw new Error(`${chromiumPath} did not start (${error.message.split('\n')[0]}); install Debian's chromium`);
  }
}

/** Open the page and wait until its WebSocket is connected and the snapshot applied. */
async function openPage(page, url) {
  await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => document.getElementById('connection')?.textContent === 'live', null, {
    timeout: 15_000,
  });
}

/** Wait until the page shows the run with the given state text, such as 'completed'. On timeout, throw with the run's row. */
async function waitForRunState(page, runId, stateText, timeout) {
  try {
    await page.waitForFunction(
      ([id, text]) => {
        const row = [...document.querySelectorAll('#runs tbody tr')].find((tr) => tr.dataset.runId === id);
        return row?.querySelector('.state')?.textContent === text;
      },
      [runId, stateText],
      { timeout, polling: 100 },
    );
  } catch (error) {
    const row = await readRunRow(page, runId);
    throw new Error(
      `run ${runId} did not show "${stateText}" on the page within ${timeout} ms ` +
        `(${error.message.split('\n')[0]}); its row: ${JSON.stringify(row)}`,
    );
  }
}

/** Read the run's row as the page renders it in web/app.js, or null when the page has none. */
async function readRunRow(page, runId) {
  return page.evaluate((id) => {
    const row = [...document.querySelectorAll('#runs tbody tr')].find((tr) => tr.dataset.runId === id);
    if (!row) return null;
    const cells = [...row.cells].map((td) => td.textContent.trim());
    const badge = row.querySelector('.state');
    const fill = row.querySelector('.bar span');
    return {
      run: cells[0],
      project: cells[1],
      state: cells[2],
      stateClass: badge ? badge.className : '',
      progress: cells[3],
      barWidth: fill ? fill.style.width : '',
      files: cells[4],
      error: row.title,
    };
  }, runId);
}

test('page shows a gateway run reach completed', { timeout: 90_000 }, async () => {
  const started = Date.now();
  // A screenshot left by an earlier run must not pass for this run's.
  fs.mkdirSync(path.dirname(screenshotFile), { recursive: true });
  fs.rmSync(screenshotFile, { force: true });
  await requirePlatform();

  const gateway = new Gateway();
  await gateway.login();
  const project = await gateway.call('POST', '/v1/projects', { name: `dashboard-e2e-${started}` });
  assert.ok(project.project_id, `POST /v1/projects returned no project_id: ${JSON.stringify(project)}`);

  const { directory, archive, pythonFiles } = packPythonPackage('json');
  assert.ok(pythonFiles > 0, `${directory} has no .py file to analyse`);
  const uploaded = await gateway.call('POST', `/v1/projects/${project.project_id}/archives`, {
    filename: 'json.tgz',
    content: archive.toString('base64'),
  });
  assert.ok(uploaded.archive_id, `upload returned no archive_id: ${JSON.stringify(uploaded)}`);

  let browser = null;
  let page = null;
  try {
    browser = await launchBrowser();
    page = browser.page;

    // Every WebSocket message the page receives, to show that the run arrived
    // as live updates on the socket opened before it started.
    const received = [];
    page.on('websocket', (socket) => {
      socket.on('framereceived', ({ payload }) => {
        try {
          received.push(JSON.parse(payload.toString()));
        } catch {
          received.push({ unparsed: String(payload).slice(0, 200) });
        }
      });
    });

    await openPage(page, dashboardUrl.href);
    const snapshot = received.find((message) => message.type === 'snapshot');
    assert.ok(snapshot, 'the page is live but received no snapshot message on /ws');
    // A reload would lose this marker, so its presence at the end shows that
    // the row appeared through live updates on this one page load.
    await page.evaluate(() => {
      window.aiswaE2eMarker = 'before-run';
    });

    // The run starts only now, with the page already open.
    const run = await gateway.call('POST', `/v1/projects/${project.project_id}/runs`, {
      archive_id: uploaded.archive_id,
    });
    assert.ok(run.run_id, `POST .../runs returned no run_id: ${JSON.stringify(run)}`);

    try {
      await waitForRunState(page, run.run_id, 'completed', COMPLETED_TIMEOUT_MS);
    } catch (error) {
      const status = await gateway.call('GET', `/v1/runs/${run.run_id}`);
      const events = received
        .filter((message) => message.run?.run_id === run.run_id)
        .map((message) => `${message.event}:${message.run.state}`);
      assert.fail(`${error.message}; gateway: ${status.state}; updates received for it: ${events.join(', ') || 'none'}`);
    }

    const timeline = received
      .filter((message) => message.type === 'update' && message.run?.run_id === run.run_id)
      .map((message) => `${message.event} ${message.timestamp.slice(11, 23)}`);
    process.stderr.write(`run ${run.run_id} on the page's WebSocket: ${timeline.join(', ')}\n`);

    const row = await readRunRow(page, run.run_id);
    assert.equal(row.run, `${run.run_id.slice(0, 8)}…`, 'run column');
    assert.equal(row.project, `${project.project_id.slice(0, 8)}…`, 'project column');
    assert.equal(row.state, 'completed', 'state column');
    assert.equal(row.stateClass, 'state state-completed', 'state badge class');
    assert.equal(row.progress, '100%', 'progress column');
    assert.equal(row.barWidth, '100%', 'progress bar width');
    assert.equal(row.files, `${pythonFiles}/${pythonFiles}`, `files column for the ${pythonFiles} .py files of ${directory}`);
    assert.equal(row.error, '', 'a completed run has no error tooltip');

    assert.equal(await page.evaluate(() => window.aiswaE2eMarker), 'before-run', 'the page was reloaded');
    assert.equal(await page.textContent('#connection'), 'live', 'connection pill after the run');
    const liveForRun = received.filter((message) => message.type === 'update' && message.run?.run_id === run.run_id);
    const completedUpdate = liveForRun.find((message) => message.event === 'analysis.completed');
    assert.ok(completedUpdate, `no live analysis.completed update for ${run.run_id} reached the page's WebSocket`);
    assert.equal(completedUpdate.run.state, 'RUN_STATE_COMPLETED', 'run state in the analysis.completed update');
    assert.equal(completedUpdate.run.files_total, pythonFiles, 'files_total in the analysis.completed update');

    // The gateway reports the same run and file count as the page.
    const status = await gateway.call('GET', `/v1/runs/${run.run_id}`);
    assert.equal(status.state, 'RUN_STATE_COMPLETED', 'run state from GET /v1/runs');
    assert.equal(status.files_total, pythonFiles, 'files_total from GET /v1/runs');
  } finally {
    if (page) {
      await page
        .screenshot({ path: screenshotFile, fullPage: true, timeout: 15_000 })
        .then(() => process.stderr.write(`screenshot: ${screenshotFile}\n`))
        .catch((error) => process.stderr.write(`screenshot failed: ${error.message}\n`));
    }
    if (browser) await browser.close();
    process.stderr.write(`browser e2e: ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  }
});

/** Build the page from the current web/ sources, serve it from a private web server and open a browser. Test `t` stops both. */
async function privatePage(t) {
  execFileSync(process.execPath, [path.join(dashboardDir, 'build.js')], { cwd: dashboardDir, stdio: 'ignore' });
  const web = await startWeb({ window: 64, queue: 256 });
  t.after(() => web.stop());
  const browser = await launchBrowser();
  t.after(() => browser.close());
  return { web, page: browser.page };
}

test('page keeps completed run after late events', { timeout: 60_000 }, async (t) => {
  const { web, page } = await privatePage(t);

  // Publish a run's events in an order the dashboard can receive them in when
  // the reflector is faster than projects, so run.queued arrives last.
  const publishRun = (runId) => {
    const events = [
      ['run.started', { run_id: runId, project_id: 'p-late' }],
      ['run.progress', { run_id: runId, project_id: 'p-late', files_done: 3, files_total: 3 }],
      ['analysis.completed', { run_id: runId, project_id: 'p-late', summary: { files: 3, functions: 7 } }],
      ['run.progress', { run_id: runId, project_id: 'p-late', files_done: 1, files_total: 3 }],
      ['run.started', { run_id: runId, project_id: 'p-late' }],
      ['run.queued', { run_id: runId, project_id: 'p-late', state: 'queued' }],
    ];
    for (const [routingKey, body] of events) {
      for (const update of decodeEvent(routingKey, JSON.stringify(body))) web.hub.publish(update);
    }
  };

  // One run before the page opens, so it comes in the snapshot, and one after, as live updates.
  publishRun('run-in-snapshot');
  await openPage(page, `http://127.0.0.1:${web.port}/`);
  await waitForRunState(page, 'run-in-snapshot', 'completed', 5_000);
  publishRun('run-live');
  // The last update the page receives is run-live's run.queued; wait for it
  // to reach the event list so that the checks below read the page after it.
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll('#events li')];
    return items.filter((li) => li.textContent.includes('run.queued') && li.textContent.includes('run-live')).length === 1;
  }, null, { timeout: 5_000 });

  for (const runId of ['run-in-snapshot', 'run-live']) {
    const row = await readRunRow(page, runId);
    assert.ok(row, `the page shows no row for ${runId}`);
    assert.equal(row.state, 'completed', `state of ${runId} after a late run.queued`);
    assert.equal(row.progress, '100%', `progress of ${runId}`);
    assert.equal(row.files, '3/3', `files of ${runId}`);
  }
});

test('page draws chart axes only with data', { timeout: 60_000 }, async (t) => {
  const { web, page } = await privatePage(t);
  const queueChartDrawn = () => {
    const canvas = document.getElementById('queue-chart');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let alpha = 3; alpha < pixels.length; alpha += 4) if (pixels[alpha] !== 0) return true;
    return false;
  };

  await openPage(page, `http://127.0.0.1:${web.port}/`);
  assert.equal(await page.evaluate(queueChartDrawn), false, 'the empty queue chart draws axes');

  web.hub.publish({
    metric_type: 'queue_depth',
    value: 4,
    ts: Date.now() / 1000,
    service: '',
    labels: { queue: 'analysis.tasks', consumers: '1' },
    run: null,
    event: 'queue.depth',
    key: 'queue:analysis.tasks',
  });
  await page.waitForFunction(queueChartDrawn, null, { timeout: 5_000 });
  const row = await page.textContent('#queues tbody');
  assert.match(row, /analysis\.tasks\s*4\s*1/);
});

test('chart shows a series with one sample', { timeout: 60_000 }, async (t) => {
  const { web, page } = await privatePage(t);
  // Pixels of the first series' color (#2457c5) in the latency chart, above
  // the legend at the bottom, whose box has that color too.
  const seriesPixels = () => {
    const canvas = document.getElementById('latency-chart');
    const height = Math.floor(canvas.height * 0.7);
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, height).data;
    let found = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      if (pixels[i] === 0x24 && pixels[i + 1] === 0x57 && pixels[i + 2] === 0xc5 && pixels[i + 3] === 255) found += 1;
    }
    return found;
  };

  await openPage(page, `http://127.0.0.1:${web.port}/`);
  web.hub.publish({
    metric_type: 'latency_p99_ms',
    value: 12.5,
    ts: Date.now() / 1000,
    service: 'projects',
    labels: {},
    run: null,
    event: 'metrics.projects',
    key: 'latency_p99_ms:projects',
  });
  // The page redraws once per animation frame. The assert below reports a
  // chart that never shows the sample.
  await page.waitForFunction(seriesPixels, null, { timeout: 5_000 }).catch(() => {});
  assert.ok(await page.evaluate(seriesPixels) > 0, 'one p99 sample draws nothing in the latency chart');
});
