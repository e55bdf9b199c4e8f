'use strict';
// WebSocket fan-out to browsers, with a bounded buffer per client.
//
// Flow control works like AMQP prefetch. A client has at most `window`
// updates that it has not acknowledged with {"ack": <sequence>}, and further
// updates wait in its own queue of at most `queue` updates. A client whose
// queue is full, or whose socket holds more than `maxBytes` unsent bytes, is
// dropped with close code 1013, so a slow client never stalls the others and
// never grows the server's memory without bound. The encoded update is one
// Buffer shared by every client, so a queued update costs a pointer.

const { WebSocketServer } = require('ws');
const { BoundedQueue } = require('./ring');
const { METRIC_TYPES } = require('./events');
const { wireJson, webUpdate } = require('./hub');

const PATH = '/ws';
const SLOW_CLIENT = 1013;
const GOING_AWAY = 1001;

function rejectUpgrade(socket, status, reason) {
  const body = `${reason}\n`;
  socket.end(
    `HTTP/1.1 ${status}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
  );
}

function requestedTypes(url) {
  const raw = url.searchParams.get('metric_types');
  if (!raw) return [];
  const types = raw.split(',').map((type) => type.trim()).filter(Boolean);
  const unknown = types.filter((type) => !METRIC_TYPES.includes(type));
  if (unknown.length) {
    throw new Error(`unknown metric type ${unknown.join(', ')}; use some of ${METRIC_TYPES.join(', ')}`);
  }
  return types;
}

class Client {
  constructor(owner, ws, id) {
    this.owner = owner;
    this.ws = ws;
    this.id = id;
    this.inflight = new BoundedQueue(owner.window);
    this.queued = new BoundedQueue(owner.queue);
    this.dropped = false;
  }

  offer(update) {
    if (this.dropped) return;
    if (this.ws.bufferedAmount > this.owner.maxBytes) {
      this.drop(`more than ${this.owner.maxBytes} bytes unsent`);
    } else if (this.inflight.length < this.owner.window && this.queued.length === 0) {
      this.send(update);
    } else if (!this.queued.push(update)) {
      this.drop(`${this.owner.window} updates unacknowledged and ${this.owner.queue} queued`);
    }
  }

  send(update) {
    this.inflight.push(update.sequence);
    this.ws.send(wireJson(update), { binary: false });
  }

  acknowledge(sequence) {
    while (this.inflight.length && this.inflight.peek() <= sequence) this.inflight.shift();
    while (this.queued.length && this.inflight.length < this.owner.window) this.send(this.queued.shift());
  }

  drop(reason) {
    this.dropped = true;
    this.queued.clear();
    this.owner.onDrop(this, reason);
    this.ws.close(SLOW_CLIENT, `slow client: ${reason}`.slice(0, 120));
    // A client that does not read never replies to the close frame.
    setTimeout(() => this.ws.terminate(), 1000).unref();
  }
}

class WebClients {
  /**
   * `authorize(request)` resolves to {allow, reason}; pass null to accept
   * every client. `metrics` receives counters (see metrics.js).
   */
  constructor({ hub, log, window, queue, maxBytes, maxClients, authorize = null, metrics = null, heartbeatMs = 30000 }) {
    this.hub = hub;
    this.log = log;
    this.window = window;
    this.queue = queue;
    this.maxBytes = maxBytes;
    this.maxClients = maxClients;
    this.authorize = authorize;
    this.metrics = metrics;
    this.clients = new Set();
    this.nextId = 1;
    this.drops = 0;
    this.wss = new WebSocketServer({ noServer: true, maxPayload: 1024, clientTracking: false });
    this.heartbeat = setInterval(() => this.ping(), heartbeatMs);
    this.heartbeat.unref();
  }

  /** Serve WebSocket upgrades on `server` at /ws. */
  attach(server) {
    server.on('upgrade', (request, socket, head) => {
      this.upgrade(request, socket, head).catch((error) => {
        this.log.error({ err: error }, 'WebSocket upgrade failed');
        socket.destroy();
      });
    });
  }

  async upgrade(request, socket, head) {
    socket.on('error', () => socket.destroy());
    const url = new URL(request.url, 'http://dashboard');
    if (url.pathname !== PATH) return rejectUpgrade(socket, '404 Not Found', `no WebSocket endpoint at ${url.pathname}; use ${PATH}`);
    const origin = request.headers.origin;
    if (origin) {
      let host = null;
      try {
        host = new URL(origin).host;
      } catch {
        // an invalid Origin is treated as a foreign one
      }
      if (host !== request.headers.host) {
        return rejectUpgrade(socket, '403 Forbidden', `origin ${origin} may not open this WebSocket; open the page from ${request.headers.host}`);
      }
    }
    if (this.clients.size >= this.maxClients) {
      return rejectUpgrade(socket, '503 Service Unavailable', `the dashboard serves at most ${this.maxClients} clients; retry later`);
    }

    let types;
    try {
      types = requestedTypes(url);
    } catch (error) {
      return rejectUpgrade(socket, '400 Bad Request', error.message);
    }
    if (this.authorize) {
      const decision = await this.authorize(request);
      if (!decision.allow) return rejectUpgrade(socket, '403 Forbidden', decision.reason);
    }
    if (socket.destroyed) return undefined;
    this.wss.handleUpgrade(request, socket, head, (ws) => this.connected(ws, types, request));
    return undefined;
  }

  connected(ws, types, request) {
    const client = new Client(this, ws, this.nextId++);
    this.clients.add(client);
    this.metrics?.gauge('aiswa_dashboard_clients', { transport: 'websocket' }, this.clients.size);
    const snapshot = this.hub.snapshot(types).map(webUpdate);
    ws.send(JSON.stringify({ type: 'snapshot', window: this.window, updates: snapshot }));
    const unsubscribe = this.hub.subscribe(types, (update) => client.offer(update));
    ws.isAlive = true;
    ws.on('pong', () => {
      ws.isAlive = true;
    });
    ws.on('message', (data) => this.message(client, data));
    ws.on('error', (error) => this.log.debug({ err: error, client: client.id }, 'WebSocket error'));
    ws.on('close', () => {
      unsubscribe();
      this.clients.delete(client);
      this.metrics?.gauge('aiswa_dashboard_clients', { transport: 'websocket' }, this.clients.size);
    });
    this.log.debug({ client: client.id, metric_types: types, caller: request.headers['l5d-client-id'] || '' }, 'WebSocket client connected');
  }

  message(client, data) {
    let sequence = NaN;
    try {
      sequence = JSON.parse(data.toString()).ack;
    } catch {
      // handled below
    }
    if (!Number.isSafeInteger(sequence)) {
      this.log.debug({ client: client.id }, 'WebSocket message ignored: expected {"ack": <sequence>}');
      return;
    }
    client.acknowledge(sequence);
  }

  onDrop(client, reason) {
    this.drops += 1;
    this.metrics?.inc('aiswa_dashboard_dropped_clients_total', { transport: 'websocket' });
    this.log.warn({ client: client.id, reason }, 'slow WebSocket client dropped');
  }

  ping() {
    for (const client of this.clients) {
      if (!client.ws.isAlive) {
        client.ws.terminate();
        continue;
      }
      client.ws.isAlive = false;
      client.ws.ping();
    }
  }

  /** Close every client with 1001 (going away) and stop the heartbeat. */
  close() {
    clearInterval(this.heartbeat);
    for (const client of this.clients) client.ws.close(GOING_AWAY, 'dashboard shutting down');
  }
}

module.exports = { WebClients, PATH, SLOW_CLIENT };
