'use strict';
// The fan-out hub: every update goes to the subscribers that asked for its
// metric type, and the latest value of every series is kept for newcomers
// (for a run, its most advanced update, as web/run_state.js defines it).

const { BoundedQueue } = require('./ring');
const { isStaleRunUpdate } = require('../web/run_state');

const WIRE_JSON = Symbol('wireJson');

/** Encode the update as one WebSocket text message, once for all clients. */
function wireJson(update) {
  if (!update[WIRE_JSON]) {
    update[WIRE_JSON] = Buffer.from(JSON.stringify(webUpdate(update)));
  }
  return update[WIRE_JSON];
}

function rfc3339(ts) {
  const millis = Math.floor(ts * 1000);
  const micros = Math.round((ts * 1000 - millis) * 1000);
  const iso = new Date(millis).toISOString();
  return `${iso.slice(0, -1)}${String(Math.min(micros, 999)).padStart(3, '0')}Z`;
}

function webUpdate(update) {
  return {
    type: 'update',
    sequence: update.sequence,
    metric_type: update.metric_type,
    value: update.value,
    timestamp: rfc3339(update.ts),
    service: update.service,
    labels: update.labels,
    run: update.run,
    event: update.event,
  };
}

class Hub {
  /**
   * `snapshotKeys` bounds the series kept for the snapshot, `recentEvents`
   * the updates without a series (events, single denials) kept beside them.
   */
  constructor({ log, snapshotKeys = 2000, recentEvents = 50 } = {}) {
    this.log = log;
    this.sequence = 0;
    this.all = new Set();
    this.byType = new Map();
    this.latest = new Map();
    this.snapshotKeys = snapshotKeys;
    this.recent = new BoundedQueue(recentEvents);
    this.published = 0;
  }

  get subscribers() {
    let count = this.all.size;
    for (const set of this.byType.values()) count += set.size;
    return count;
  }

  /**
   * Add a subscriber: `deliver(update)` is called for every update of the
   * given metric types (every type when `types` is empty). Returns a
   * function that removes it.
   */
  subscribe(types, deliver) {
    const subscriber = { deliver };
    const wanted = [...new Set(types || [])];
    if (wanted.length === 0) {
      this.all.add(subscriber);
    } else {
      for (const type of wanted) {
        if (!this.byType.has(type)) this.byType.set(type, new Set());
        this.byType.get(type).add(subscriber);
      }
    }
    return () => {
      this.all.delete(subscriber);
      for (const type of wanted) this.byType.get(type)?.delete(subscriber);
    };
  }

  /** Number the update, remember it for the snapshot and deliver it. */
  publish(update) {
    this.sequence += 1;
    update.sequence = this.sequence;
    this.published += 1;
    this.remember(update);
    this.deliverTo(this.all, update);
    const typed = this.byType.get(update.metric_type);
    if (typed) this.deliverTo(typed, update);
    return update;
  }

  deliverTo(subscribers, update) {
    for (const subscriber of subscribers) {
      try {
        subscriber.deliver(update);
      } catch (error) {
        // One failing subscriber must not stop the others.
        this.log?.error({ err: error, metric_type: update.metric_type }, 'subscriber failed; skipped');
      }
    }
  }

  remember(update) {
    if (update.key === null) {
      if (!this.recent.push(update)) {
        this.recent.shift();
        this.recent.push(update);
      }
      return;
    }
    const previous = this.latest.get(update.key);
    const isRunProgress = update.metric_type === 'run_progress' && previous?.run && update.run;
    if (isRunProgress && isStaleRunUpdate(previous.run, update.run)) return;
    // Delete first so that Map order is recency and the oldest series goes first.
    this.latest.delete(update.key);
    this.latest.set(update.key, update);
    if (this.latest.size > this.snapshotKeys) {
      this.latest.delete(this.latest.keys().next().value);
    }
  }

  /** Return the latest update of every series and the recent events, oldest first. */
  snapshot(types) {
    const wanted = types && types.length ? new Set(types) : null;
    const updates = [...this.latest.values()];
    for (let i = 0; i < this.recent.length; i += 1) {
      updates.push(this.recent.items[(this.recent.head + i) % this.recent.items.length]);
    }
    return updates
      .filter((update) => !wanted || wanted.has(update.metric_type))
      .sort((a, b) => a.sequence - b.sequence);
  }
}

module.exports = { Hub, wireJson, webUpdate, rfc3339 };
