'use strict';
// aiswa.dashboard.v1.DashboardService over @grpc/grpc-js, with the gRPC
// health and reflection services that every AI-SWA workload serves.

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation } = require('grpc-health-check');
const { ReflectionService } = require('@grpc/reflection');
const { METRIC_TYPES } = require('./events');

const SERVICE_NAME = 'aiswa.dashboard.v1.DashboardService';
const SUBSCRIBE_METHOD = `/${SERVICE_NAME}/SubscribeToUpdates`;
const PROTO_FILE = 'aiswa/dashboard/v1/dashboard.proto';

/** Load dashboard.proto from `protoRoot` (the repository's proto/ folder). */
function loadProto(protoRoot) {
  // protobufjs ships google/api/annotations.proto, which the contract imports.
  const googleProtos = path.dirname(require.resolve('protobufjs/package.json'));
  return protoLoader.loadSync(PROTO_FILE, {
    includeDirs: [protoRoot, googleProtos],
    keepCase: true,
    longs: Number,
    enums: String,
    defaults: true,
  });
}

function timestamp(ts) {
  const seconds = Math.floor(ts);
  return { seconds, nanos: Math.min(Math.round((ts - seconds) * 1e9), 999999999) };
}

/** Convert the update to an aiswa.dashboard.v1.Update message. */
function toMessage(update, snapshot = false) {
  return {
    metric_type: update.metric_type,
    value: update.value,
    timestamp: timestamp(update.ts),
    service: update.service,
    labels: update.labels,
    run: update.run,
    event: update.event,
    sequence: update.sequence,
    snapshot,
  };
}

class DashboardGrpc {
  /**
   * `queue` bounds the updates waiting to be sent on one stream; a stream
   * that exceeds it is ended with RESOURCE_EXHAUSTED.
   */
  constructor({ hub, log, protoRoot, queue, interceptors = [], metrics = null }) {
    this.hub = hub;
    this.log = log;
    this.queue = queue;
    this.metrics = metrics;
    this.streams = new Set();
    this.drops = 0;
    this.packageDefinition = loadProto(protoRoot);
    const proto = grpc.loadPackageDefinition(this.packageDefinition);
    this.server = new grpc.Server({ interceptors, 'grpc.max_receive_message_length': 1024 * 1024 });
    this.server.addService(proto.aiswa.dashboard.v1.DashboardService.service, {
      SubscribeToUpdates: (call) => this.subscribe(call),
    });
    this.health = new HealthImplementation({ '': 'NOT_SERVING', [SERVICE_NAME]: 'NOT_SERVING' });
    this.health.addToServer(this.server);
    new ReflectionService(this.packageDefinition).addToServer(this.server);
  }

  /** Bind `address` ("HOST:PORT"); resolves to the bound port. */
  bind(address) {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (error, port) => {
        if (error) {
          reject(new Error(`could not bind gRPC on ${address} (${error.message}); is another process listening there?`));
        } else {
          resolve(port);
        }
      });
    });
  }

  setServing(serving) {
    const status = serving ? 'SERVING' : 'NOT_SERVING';
    this.health.setStatus('', status);
    this.health.setStatus(SERVICE_NAME, status);
  }

  subscribe(call) {
    const { metric_types: types, include_snapshot: includeSnapshot } = call.request;
    const unknown = types.filter((type) => !METRIC_TYPES.includes(type));
    if (unknown.length) {
      call.emit('error', {
        code: grpc.status.INVALID_ARGUMENT,
        details: `unknown metric type ${unknown.join(', ')}; use some of ${METRIC_TYPES.join(', ')}, or none for all`,
      });
      return;
    }
    const caller = call.metadata.get('l5d-client-id')[0] || '';
    const stream = { call, ended: false };
    this.streams.add(stream);
    this.metrics?.gauge('aiswa_dashboard_clients', { transport: 'grpc' }, this.streams.size);
    if (includeSnapshot) {
      for (const update of this.hub.snapshot(types)) call.write(toMessage(update, true));
    }
    const unsubscribe = this.hub.subscribe(types, (update) => {
      if (stream.ended) return;
      if (call.writableLength >= this.queue) {
        this.drops += 1;
        this.metrics?.inc('aiswa_dashboard_dropped_clients_total', { transport: 'grpc' });
        this.log.warn({ caller, queued: call.writableLength }, 'slow gRPC subscriber dropped');
        this.end(stream, grpc.status.RESOURCE_EXHAUSTED,
          `subscriber too slow: ${call.writableLength} updates waiting; subscribe again with include_snapshot to catch up`);
        return;
      }
      call.write(toMessage(update));
    });
    stream.unsubscribe = unsubscribe;
    const cleanup = () => {
      stream.ended = true;
      unsubscribe();
      if (this.streams.delete(stream)) {
        this.metrics?.gauge('aiswa_dashboard_clients', { transport: 'grpc' }, this.streams.size);
      }
    };
    call.on('cancelled', cleanup);
    call.on('close', cleanup);
    call.on('error', cleanup);
    this.log.info({ caller, metric_types: types, include_snapshot: includeSnapshot }, 'gRPC subscriber connected');
  }

  end(stream, code, details) {
    if (stream.ended) return;
    stream.ended = true;
    stream.unsubscribe?.();
    this.streams.delete(stream);
    this.metrics?.gauge('aiswa_dashboard_clients', { transport: 'grpc' }, this.streams.size);
    stream.call.emit('error', { code, details });
  }

  /** End every stream with UNAVAILABLE, then stop within `graceMs`. */
  async shutdown(graceMs) {
    this.setServing(false);
    for (const stream of [...this.streams]) {
      this.end(stream, grpc.status.UNAVAILABLE, 'the dashboard is shutting down; subscribe again');
    }
    await new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
}

module.exports = { DashboardGrpc, loadProto, toMessage, SERVICE_NAME, SUBSCRIBE_METHOD };
