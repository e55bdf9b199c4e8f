'use strict';
// Counters and gauges in the Prometheus text format, for /metrics on
// AISWA_METRICS_ADDRESS like the Python services. Only what the dashboard
// needs, so no client library.

const HELP = {
  aiswa_dashboard_events_total: ['counter', 'Events taken from the queue, by outcome: published or malformed'],
  aiswa_dashboard_updates_total: ['counter', 'Updates published to subscribers, by metric type'],
  aiswa_dashboard_clients: ['gauge', 'Connected subscribers, by transport'],
  aiswa_dashboard_dropped_clients_total: ['counter', 'Subscribers dropped because they fell behind, by transport'],
  aiswa_dashboard_amqp_connected: ['gauge', '1 while the event consumer is connected to RabbitMQ'],
  aiswa_dashboard_openbao_renewals_total: ['counter', 'OpenBao renewals, by kind (token or lease) and outcome (renewed or failed)'],
  aiswa_dashboard_amqp_credentials_replaced_total: ['counter', 'RabbitMQ credentials replaced by new ones from OpenBao, by reason'],
  aiswa_authz_denials_total: ['counter', 'gRPC calls and WebSocket upgrades denied by call-level authorization'],
  aiswa_breaker_state: ['gauge', 'Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open'],
  process_resident_memory_bytes: ['gauge', 'Resident memory of the process'],
  nodejs_heap_used_bytes: ['gauge', 'V8 heap in use'],
};

function escape(value) {
  return String(value).replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function seriesKey(labels) {
  return Object.keys(labels)
    .sort()
    .map((name) => `${name}="${escape(labels[name])}"`)
    .join(',');
}

class Metrics {
  constructor() {
    this.values = new Map();
  }

  series(name) {
    if (!this.values.has(name)) this.values.set(name, new Map());
    return this.values.get(name);
  }

  inc(name, labels = {}, by = 1) {
    const series = this.series(name);
    const key = seriesKey(labels);
    series.set(key, (series.get(key) || 0) + by);
  }

  gauge(name, labels, value) {
    this.series(name).set(seriesKey(labels), value);
  }

  get(name, labels = {}) {
    return this.values.get(name)?.get(seriesKey(labels)) || 0;
  }

  render() {
    const memory = process.memoryUsage();
    this.gauge('process_resident_memory_bytes', {}, memory.rss);
    this.gauge('nodejs_heap_used_bytes', {}, memory.heapUsed);
    const lines = [];
    for (const [name, series] of this.values) {
      const [type, help] = HELP[name] || ['untyped', name];
      lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
      for (const [key, value] of series) lines.push(`${name}${key ? `{${key}}` : ''} ${value}`);
    }
    return `${lines.join('\n')}\n`;
  }
}

module.exports = { Metrics };
