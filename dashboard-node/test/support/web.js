'use strict';
// A hub with the HTTP server and WebSocket fan-out on an ephemeral loopback port.

const { Hub } = require('../../src/hub');
const { WebClients } = require('../../src/ws');
const { createHttpServer, listen } = require('../../src/http');
const { captureLogger } = require('./logs');

async function startWeb({ window = 8, queue = 16, maxBytes = 4 * 1024 * 1024, maxClients = 10000, authorize = null, health } = {}) {
  const logs = captureLogger();
  const hub = new Hub({ log: logs.log });
  const web = new WebClients({ hub, log: logs.log, window, queue, maxBytes, maxClients, authorize });
  const server = createHttpServer({ health: health || (() => ({ ok: true })), log: logs.log });
  web.attach(server);
  const port = await listen(server, { host: '127.0.0.1', port: 0 });
  return {
    hub,
    web,
    server,
    port,
    logs,
    url: `ws://127.0.0.1:${port}/ws`,
    async stop() {
      web.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

let counter = 0;
function event(metricType = 'queue_depth', value = 1) {
  counter += 1;
  return { metric_type: metricType, value, ts: Date.now() / 1000, service: 'test', labels: { n: String(counter) }, run: null, event: 'test.event', key: null };
}

module.exports = { startWeb, event };
