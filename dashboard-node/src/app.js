'use strict';
// Assembles the dashboard: event consumer -> hub -> gRPC streams and
// WebSocket clients, plus the page, /healthz, /metrics and the queue poller.

const { Hub } = require('./hub');
const { Metrics } = require('./metrics');
const { Authorizer, authorizationInterceptor, authorizeRequest } = require('./authz');
const { DashboardGrpc, SUBSCRIBE_METHOD } = require('./grpc');
const { EventConsumer } = require('./consumer');
const { AmqpCredentials } = require('./amqp_credentials');
const { connectOpenBao } = require('./openbao');
const { QueueDepthPoller } = require('./queue_depth');
const { WebClients } = require('./ws');
const { createHttpServer, createMetricsServer, listen } = require('./http');
const { version } = require('../package.json');

function closeServer(server, graceMs) {
  if (!server) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => server.closeAllConnections(), graceMs);
    timer.unref();
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections();
  });
}

/**
 * Start every part of the dashboard from `config` (see config.js) and
 * resolve to a handle with the bound ports and stop(). The event consumer
 * connects in the background; /healthz and the gRPC health service report
 * SERVING once it consumes. With config.openbao, it first logs in to
 * OpenBao, and `onFatal(error)` is called when the token or the RabbitMQ
 * credentials can no longer be renewed or replaced.
 */
async function startDashboard(config, { log: root, metrics = new Metrics(), dist, heartbeatMs, onFatal = null } = {}) {
  const log = root.child({ name: 'aiswa.dashboard' });
  onFatal = onFatal || ((error) => log.fatal({ err: error }, 'OpenBao credentials lost'));
  let openbao = null;
  let credentials = null;
  if (config.openbao) {
    const openbaoLog = root.child({ name: 'aiswa.dashboard.openbao' });
    openbao = await connectOpenBao(config.openbao, { log: openbaoLog, metrics, onFatal });
    credentials = new AmqpCredentials({ client: openbao.client, path: config.openbao.credsPath, log: openbaoLog, metrics, onFatal });
  }
  const hub = new Hub({ log: root.child({ name: 'aiswa.dashboard.hub' }) });
  let authorizer = null;
  if (config.opaUrl) {
    authorizer = new Authorizer({
      destination: config.service,
      opaUrl: config.opaUrl,
      timeoutMs: config.opaTimeoutMs,
      namespace: config.namespace,
      log: root.child({ name: 'aiswa.dashboard.authz' }),
      metrics,
      // The dashboard's own denials show on its page like everyone else's.
      onDenied: ({ caller, method, reason, kind }) =>
        hub.publish({
          metric_type: 'authz_denied',
          value: 1,
          ts: Date.now() / 1000,
          service: config.service,
          labels: { caller, method, reason: reason.slice(0, 256), reason_kind: kind },
          run: null,
          event: 'authz.denied',
          key: null,
        }),
    });
    log.info({ opa_url: config.opaUrl, timeout_ms: config.opaTimeoutMs }, 'call-level authorization enabled');
    if (config.wsAuthz === 'off') {
      log.warn({ http_address: config.http.text }, 'AISWA_DASHBOARD_WS_AUTHZ=off: any local client may open the WebSocket');
    }
  } else {
    log.warn({ destination: config.service }, 'AISWA_OPA_URL is not set: calls are not authorized by OPA');
  }

  const grpcServer = new DashboardGrpc({
    hub,
    log: root.child({ name: 'aiswa.dashboard.grpc' }),
    protoRoot: config.protoRoot,
    queue: config.grpcQueue,
    interceptors: authorizer ? [authorizationInterceptor(authorizer)] : [],
    metrics,
  });
  const grpcPort = await grpcServer.bind(config.grpc.text);

  const consumer = new EventConsumer({
    url: config.amqpUrl,
    credentials,
    queue: config.queue,
    bindingKeys: config.bindingKeys,
    prefetch: config.prefetch,
    hub,
    log: root.child({ name: 'aiswa.dashboard.consumer' }),
    metrics,
    service: config.service,
  });
  const poller = new QueueDepthPoller({
    queues: config.watchQueues,
    intervalMs: config.queuePollMs,
    hub,
    log: root.child({ name: 'aiswa.dashboard.queue_depth' }),
    metrics,
    service: config.service,
  });
  consumer.onConnect((connection) => {
    poller.useConnection(connection);
    grpcServer.setServing(true);
  });

  const web = new WebClients({
    hub,
    log: root.child({ name: 'aiswa.dashboard.websocket' }),
    window: config.wsWindow,
    queue: config.wsQueue,
    maxBytes: config.wsMaxBytes,
    maxClients: config.maxClients,
    authorize: authorizer && config.wsAuthz === 'opa' ? authorizeRequest(authorizer, SUBSCRIBE_METHOD) : null,
    metrics,
    heartbeatMs,
  });
  const health = () => ({
    ok: consumer.connected,
    amqp: consumer.connected ? 'consuming' : 'disconnected',
    queue: config.queue,
    websocket_clients: web.clients.size,
    grpc_subscribers: grpcServer.streams.size,
    events: consumer.consumed,
    malformed_events: consumer.malformed,
    dropped_clients: web.drops + grpcServer.drops,
  });
  const httpServer = createHttpServer({ health, log: root.child({ name: 'aiswa.dashboard.http' }), dist });
  web.attach(httpServer);
  const httpPort = await listen(httpServer, config.http);
  let metricsServer = null;
  let metricsPort = null;
  if (config.metrics) {
    metricsServer = createMetricsServer(metrics);
    metricsPort = await listen(metricsServer, config.metrics);
  }

  credentials?.attach((next) => consumer.switchCredentials(next));
  consumer.start();
  poller.start();
  log.info(
    {
      grpc_address: `${config.grpc.host}:${grpcPort}`,
      http_address: `${config.http.host}:${httpPort}`,
      metrics_address: metricsServer ? `${config.metrics.host}:${metricsPort}` : null,
      identity: config.identity,
      version,
      pid: process.pid,
    },
    'service started',
  );

  let stopped = null;
  async function stop() {
    log.info({ grace_ms: config.shutdownGraceMs }, 'service stopping: closing streams and connections');
    grpcServer.setServing(false);
    await credentials?.stop();
    await consumer.stop();
    await openbao?.stop();
    poller.stop();
    web.close();
    await Promise.all([
      grpcServer.shutdown(config.shutdownGraceMs),
      closeServer(httpServer, config.shutdownGraceMs),
      closeServer(metricsServer, config.shutdownGraceMs),
    ]);
    log.info({ identity: config.identity }, 'service stopped');
  }

  return {
    hub,
    consumer,
    web,
    grpc: grpcServer,
    metrics,
    ports: { grpc: grpcPort, http: httpPort, metrics: metricsPort },
    stop: () => {
      stopped = stopped || stop();
      return stopped;
    },
  };
}

module.exports = { startDashboard };
