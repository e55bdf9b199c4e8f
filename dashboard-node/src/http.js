'use strict';
// The page (built into dist/ by build.js), /healthz, and the WebSocket
// endpoint, which ws.js attaches to the same server.

const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');

const DIST = path.resolve(__dirname, '..', 'dist');
const FILES = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/app.css': ['app.css', 'text/css; charset=utf-8'],
};
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

function loadPage(dist) {
  const page = new Map();
  for (const [route, [file, type]] of Object.entries(FILES)) {
    const full = path.join(dist, file);
    if (fs.existsSync(full)) page.set(route, { body: fs.readFileSync(full), type });
  }
  return page;
}

function reply(response, status, type, body, headers = {}) {
  response.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), ...SECURITY_HEADERS, ...headers });
  response.end(body);
}

/**
 * Create the HTTP server. `health()` returns {ok, ...details}, and /healthz
 * returns them with status 200 when ok, else 503.
 */
function createHttpServer({ health, log, dist = DIST }) {
  const page = loadPage(dist);
  if (!page.has('/app.js')) {
    log.warn({ dist }, 'the page is not built; run `npm run build` in dashboard-node');
  }
  return http.createServer((request, response) => {
    const { pathname } = new URL(request.url, 'http://dashboard');
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      return reply(response, 405, 'text/plain; charset=utf-8', 'only GET and HEAD\n', { allow: 'GET, HEAD' });
    }
    if (pathname === '/healthz') {
      const state = health();
      return reply(response, state.ok ? 200 : 503, 'application/json', `${JSON.stringify(state)}\n`, { 'cache-control': 'no-store' });
    }
    const file = page.get(pathname);
    if (file) return reply(response, 200, file.type, file.body, { 'cache-control': 'no-cache' });
    if (FILES[pathname]) {
      return reply(response, 503, 'text/plain; charset=utf-8', 'the page is not built; run `npm run build` in dashboard-node\n');
    }
    return reply(response, 404, 'text/plain; charset=utf-8', `nothing at ${pathname}; the page is at /\n`);
  });
}

/** Create the Prometheus server for AISWA_METRICS_ADDRESS, separate like the Python services'. */
function createMetricsServer(metrics) {
  return http.createServer((request, response) => {
    if (new URL(request.url, 'http://dashboard').pathname !== '/metrics') {
      return reply(response, 404, 'text/plain; charset=utf-8', 'metrics are at /metrics\n');
    }
    return reply(response, 200, 'text/plain; version=0.0.4; charset=utf-8', metrics.render());
  });
}

/** Listen on {host, port}; resolves to the bound port. */
function listen(server, { host, port }) {
  return new Promise((resolve, reject) => {
    const failed = (error) => reject(new Error(`could not listen on ${host}:${port} (${error.code || error.message}); is another process listening there?`));
    server.once('error', failed);
    server.listen(port, host, () => {
      server.off('error', failed);
      resolve(server.address().port);
    });
  });
}

module.exports = { createHttpServer, createMetricsServer, listen, DIST };
