'use strict';
// Turns one event from the aiswa.events exchange into dashboard updates.
// The schema is documented in docs/dashboard.md; keep the two in step.

class MalformedEvent extends Error {
  constructor(routingKey, reason) {
    super(`event ${JSON.stringify(routingKey)} is malformed: ${reason}`);
    this.name = 'MalformedEvent';
    this.routingKey = routingKey;
    this.reason = reason;
  }
}

// Every metric type an update can carry, which is also what a subscriber may ask for.
const METRIC_TYPES = Object.freeze([
  'run_progress',
  'roadmap_items',
  'queue_depth',
  'request_rate',
  'error_rate',
  'latency_p50_ms',
  'latency_p99_ms',
  'authz_denials',
  'authz_denied',
  'breaker_state',
  'event',
]);

const RUN_STATES = {
  'run.queued': 'RUN_STATE_QUEUED',
  'run.started': 'RUN_STATE_RUNNING',
  'run.progress': 'RUN_STATE_RUNNING',
  'analysis.completed': 'RUN_STATE_COMPLETED',
  'analysis.failed': 'RUN_STATE_FAILED',
};

// The values of aiswa_breaker_state in services/runtime/aiswa_runtime/_metrics.py.
const BREAKER_STATES = { closed: 0, 'half-open': 1, open: 2 };

const MAX_BODY_BYTES = 1024 * 1024;
const MAX_LABELS = 16;
const MAX_LABEL_CHARS = 256;

function isObject(value) {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function text(value) {
  const string = typeof value === 'string' ? value : JSON.stringify(value);
  return string.length > MAX_LABEL_CHARS ? `${string.slice(0, MAX_LABEL_CHARS - 1)}…` : string;
}

function scalarLabels(object, skip = new Set()) {
  const labels = {};
  let count = 0;
  for (const [key, value] of Object.entries(object)) {
    if (skip.has(key) || value === null || typeof value === 'object') continue;
    if (count++ >= MAX_LABELS) break;
    labels[key] = text(value);
  }
  return labels;
}

// Reads fields of one event body and throws MalformedEvent naming the field.
class Fields {
  constructor(routingKey, body) {
    this.routingKey = routingKey;
    this.body = body;
  }

  fail(reason) {
    throw new MalformedEvent(this.routingKey, reason);
  }

  string(name, { optional = false } = {}) {
    const value = this.body[name];
    if (value === undefined && optional) return '';
    if (typeof value !== 'string' || value === '') {
      this.fail(`${name} must be a non-empty string, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  count(name, { optional = false } = {}) {
    const value = this.body[name];
    if (value === undefined && optional) return 0;
    if (!Number.isInteger(value) || value < 0) {
      this.fail(`${name} must be a whole number >= 0, got ${JSON.stringify(value)}`);
    }
    return value;
  }

  number(name, { optional = false } = {}) {
    const value = this.body[name];
    if (value === undefined && optional) return null;
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
      this.fail(`${name} must be a number >= 0, got ${JSON.stringify(value)}`);
    }
    return value;
  }
}

function eventTime(fields, properties, receivedAt) {
  const value = fields.body.timestamp;
  if (value === undefined) {
    // AMQP's timestamp property has whole seconds only.
    const amqp = properties && properties.timestamp;
    return Number.isFinite(amqp) && amqp > 0 ? amqp : receivedAt;
  }
  if (typeof value === 'number' && Number.isFinite(value) && value > 0) return value;
  if (typeof value === 'string') {
    const parsed = Date.parse(value);
    if (Number.isFinite(parsed)) return parsed / 1000;
  }
  return fields.fail(
    `timestamp must be Unix seconds (a number) or an RFC 3339 string, got ${JSON.stringify(value)}`,
  );
}

function update(metricType, value, ts, fields, extra = {}) {
  return {
    metric_type: metricType,
    value,
    ts,
    service: extra.service || '',
    labels: extra.labels || {},
    run: extra.run || null,
    event: fields.routingKey,
    // Updates with the same key replace each other in the snapshot; null keeps none.
    key: extra.key === undefined ? null : extra.key,
  };
}

function runProgress(fields, ts) {
  const state = RUN_STATES[fields.routingKey];
  const run = {
    run_id: fields.string('run_id'),
    project_id: fields.string('project_id', { optional: true }),
    state,
    files_done: fields.count('files_done', { optional: true }),
    files_total: fields.count('files_total', { optional: true }),
    error: state === 'RUN_STATE_FAILED' ? text(fields.body.error ?? '') : '',
  };
  let labels = {};
  if (fields.routingKey === 'analysis.completed') {
    const summary = fields.body.summary;
    if (summary !== undefined && !isObject(summary)) fields.fail('summary must be an object');
    labels = scalarLabels(summary || {});
    if (summary && Number.isInteger(summary.files) && summary.files >= 0) {
      run.files_done = summary.files;
      run.files_total = summary.files;
    }
  }
  if (run.files_done > run.files_total && run.files_total > 0) {
    fields.fail(`files_done ${run.files_done} exceeds files_total ${run.files_total}`);
  }
  let value = 0;
  if (state === 'RUN_STATE_COMPLETED') value = 1;
  else if (run.files_total > 0) value = run.files_done / run.files_total;
  return [update('run_progress', value, ts, fields, { run, labels, key: `run:${run.run_id}` })];
}

function roadmapReady(fields, ts) {
  const run = {
    run_id: fields.string('run_id'),
    project_id: fields.string('project_id', { optional: true }),
    state: 'RUN_STATE_UNSPECIFIED',
    files_done: 0,
    files_total: 0,
    error: '',
  };
  const items = fields.count('items');
  return [update('roadmap_items', items, ts, fields, { run, key: `roadmap:${run.run_id}` })];
}

function breakerChanged(fields, ts) {
  const service = fields.string('service');
  const upstream = fields.string('upstream');
  const to = fields.string('to');
  if (!(to in BREAKER_STATES)) {
    fields.fail(`to must be one of ${Object.keys(BREAKER_STATES).join(', ')}, got ${JSON.stringify(to)}`);
  }
  const from = typeof fields.body.from === 'string' ? fields.body.from : '';
  return [
    update('breaker_state', BREAKER_STATES[to], ts, fields, {
      service,
      labels: { upstream, state: to, from },
      key: `breaker:${service}:${upstream}`,
    }),
  ];
}

function serviceMetrics(fields, ts) {
  const service = fields.string('service');
  const window = fields.number('window_seconds');
  if (window === 0) fields.fail('window_seconds must be greater than 0');
  const requests = fields.count('requests');
  const errors = fields.count('errors');
  if (errors > requests) fields.fail(`errors ${errors} exceeds requests ${requests}`);
  const labels = { window_seconds: String(window) };
  const series = (type, value) =>
    update(type, value, ts, fields, { service, labels, key: `${type}:${service}` });
  const updates = [series('request_rate', requests / window), series('error_rate', errors / window)];
  const p50 = fields.number('latency_p50_ms', { optional: true });
  const p99 = fields.number('latency_p99_ms', { optional: true });
  if (p50 !== null) updates.push(series('latency_p50_ms', p50));
  if (p99 !== null) updates.push(series('latency_p99_ms', p99));
  if (fields.body.authz_denials !== undefined) {
    updates.push(series('authz_denials', fields.count('authz_denials')));
  }
  return updates;
}

function queueDepth(fields, ts) {
  const queue = fields.string('queue');
  const messages = fields.count('messages');
  const labels = { queue };
  if (fields.body.consumers !== undefined) labels.consumers = String(fields.count('consumers'));
  return [update('queue_depth', messages, ts, fields, { labels, key: `queue:${queue}` })];
}

function authzDenied(fields, ts) {
  const service = fields.string('service');
  const labels = {
    caller: text(typeof fields.body.caller === 'string' ? fields.body.caller : ''),
    method: text(fields.string('method')),
    reason: text(fields.string('reason')),
    reason_kind: text(fields.string('reason_kind', { optional: true }) || 'policy'),
  };
  return [update('authz_denied', 1, ts, fields, { service, labels })];
}

function anyEvent(fields, ts) {
  const service = typeof fields.body.service === 'string' ? fields.body.service : '';
  return [update('event', 1, ts, fields, { service, labels: scalarLabels(fields.body, new Set(['timestamp'])) })];
}

const HANDLERS = {
  'run.queued': runProgress,
  'run.started': runProgress,
  'run.progress': runProgress,
  'analysis.completed': runProgress,
  'analysis.failed': runProgress,
  'roadmap.ready': roadmapReady,
  'breaker.state_changed': breakerChanged,
  'metrics.service': serviceMetrics,
  'queue.depth': queueDepth,
  'authz.denied': authzDenied,
};

/**
 * Decode one broker message into updates, or throw MalformedEvent.
 *
 * `body` is the raw message body (Buffer or string), `properties` the AMQP
 * properties (for the timestamp), `receivedAt` the Unix time in seconds.
 */
function decodeEvent(routingKey, body, properties = {}, receivedAt = Date.now() / 1000) {
  const size = Buffer.byteLength(body);
  if (size > MAX_BODY_BYTES) {
    throw new MalformedEvent(routingKey, `body has ${size} bytes; the limit is ${MAX_BODY_BYTES}`);
  }
  let payload;
  try {
    payload = JSON.parse(body.toString());
  } catch (error) {
    throw new MalformedEvent(routingKey, `body is not JSON (${error.message})`);
  }
  if (!isObject(payload)) {
    const kind = payload === null ? 'null' : Array.isArray(payload) ? 'an array' : typeof payload;
    throw new MalformedEvent(routingKey, `body is JSON ${kind}, not an object`);
  }
  const fields = new Fields(routingKey, payload);
  const ts = eventTime(fields, properties, receivedAt);
  return (HANDLERS[routingKey] || anyEvent)(fields, ts);
}

module.exports = { decodeEvent, MalformedEvent, METRIC_TYPES, BREAKER_STATES, scalarLabels };
