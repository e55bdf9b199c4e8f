// The dashboard page: one WebSocket to /ws, a snapshot first, then live
// updates. Rendering is batched to one pass per animation frame.

import {
  Chart,
  LineController,
  LineElement,
  PointElement,
  LinearScale,
  Legend,
  Tooltip,
} from 'chart.js';
import { createAcker } from './acker';
import { isStaleRunUpdate } from './run_state';

Chart.register(LineController, LineElement, PointElement, LinearScale, Legend, Tooltip);

const CHART_WINDOW_MS = 10 * 60 * 1000;
const MAX_POINTS = 600;
const MAX_RUNS = 50;
const MAX_EVENTS = 100;
const MAX_DENIALS = 30;
// Series that arrive every few seconds; the event list leaves them out.
const PERIODIC = new Set(['queue_depth', 'request_rate', 'error_rate', 'latency_p50_ms', 'latency_p99_ms', 'authz_denials']);
const IDENTITY_SUFFIX = '.serviceaccount.identity.linkerd.cluster.local';
const COLORS = ['#2457c5', '#c62828', '#1a7f37', '#b35900', '#7b3fc4', '#00838f', '#ad1457', '#5d4037'];

const state = {
  runs: new Map(),
  roadmaps: new Map(),
  queues: new Map(),
  breakers: new Map(),
  services: new Map(),
  denials: [],
  events: [],
  lastUpdate: null,
};

const $ = (id) => document.getElementById(id);

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function badge(text, kind) {
  const td = document.createElement('td');
  const span = document.createElement('span');
  span.className = `state state-${kind}`;
  span.textContent = text;
  td.append(span);
  return td;
}

function fillTable(id, rows) {
  const body = $(id).tBodies[0];
  body.replaceChildren(...rows);
  const empty = $(`${id}-empty`);
  if (empty) empty.hidden = rows.length > 0;
}

function clock(date) {
  return date ? date.toLocaleTimeString([], { hour12: false }) : '';
}

function shortId(id) {
  return id.length > 12 ? `${id.slice(0, 8)}…` : id;
}

function number(value, digits = 1) {
  return value === undefined ? '' : value.toFixed(digits);
}

// --- charts ---------------------------------------------------------------

function lineChart(canvas, yTitle) {
  return new Chart(canvas, {
    type: 'line',
    data: { datasets: [] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      // Lines without points, except for a series with one sample, which has no line to draw.
      elements: {
        point: { radius: (context) => (context.dataset.data.length === 1 ? 3 : 0) },
        line: { borderWidth: 2, tension: 0.2 },
      },
      // 'auto' draws an axis only once a dataset exists. An empty linear axis
      // spans 0 to 1 ms, which the time labels would show as a time on 1 January 1970.
      scales: {
        x: { display: 'auto', type: 'linear', ticks: { maxTicksLimit: 6, callback: (value) => clock(new Date(value)) } },
        y: { display: 'auto', beginAtZero: true, title: { display: true, text: yTitle } },
      },
      plugins: { legend: { position: 'bottom', labels: { boxWidth: 12 } } },
    },
  });
}

const charts = {
  queue: lineChart($('queue-chart'), 'messages'),
  rate: lineChart($('rate-chart'), 'requests/s'),
  latency: lineChart($('latency-chart'), 'p99 ms'),
};

function addPoint(chart, label, x, y) {
  let dataset = chart.data.datasets.find((set) => set.label === label);
  if (!dataset) {
    const color = COLORS[chart.data.datasets.length % COLORS.length];
    dataset = { label, data: [], borderColor: color, backgroundColor: color };
    chart.data.datasets.push(dataset);
  }
  dataset.data.push({ x, y });
  const oldest = x - CHART_WINDOW_MS;
  while (dataset.data.length > MAX_POINTS || (dataset.data.length && dataset.data[0].x < oldest)) dataset.data.shift();
  chart.dirty = true;
}

// --- updates --------------------------------------------------------------

function apply(update) {
  const time = new Date(update.timestamp);
  const x = time.getTime();
  state.lastUpdate = time;
  switch (update.metric_type) {
    case 'run_progress': {
      // A late run.queued or run.started stays in the event list but does not move the run back.
      if (isStaleRunUpdate(state.runs.get(update.run.run_id), update.run)) break;
      state.runs.delete(update.run.run_id);
      state.runs.set(update.run.run_id, { ...update.run, value: update.value, time });
      if (state.runs.size > MAX_RUNS) state.runs.delete(state.runs.keys().next().value);
      break;
    }
    case 'roadmap_items':
      state.roadmaps.set(update.run.run_id, update.value);
      break;
    case 'queue_depth':
      state.queues.set(update.labels.queue, { messages: update.value, consumers: update.labels.consumers, time });
      addPoint(charts.queue, update.labels.queue, x, update.value);
      break;
    case 'breaker_state':
      state.breakers.set(`${update.service}\u0000${update.labels.upstream}`, {
        service: update.service, upstream: update.labels.upstream, state: update.labels.state, time,
      });
      break;
    case 'request_rate':
    case 'error_rate':
    case 'latency_p50_ms':
    case 'latency_p99_ms':
    case 'authz_denials': {
      const service = state.services.get(update.service) || {};
      service[update.metric_type] = update.value;
      service.time = time;
      state.services.set(update.service, service);
      if (update.metric_type === 'request_rate') addPoint(charts.rate, update.service, x, update.value);
      if (update.metric_type === 'latency_p99_ms') addPoint(charts.latency, update.service, x, update.value);
      break;
    }
    case 'authz_denied':
      state.denials.unshift({ time, service: update.service, ...update.labels });
      state.denials.length = Math.min(state.denials.length, MAX_DENIALS);
      break;
    default:
      break;
  }
  if (!PERIODIC.has(update.metric_type)) {
    state.events.unshift({ time, update });
    state.events.length = Math.min(state.events.length, MAX_EVENTS);
  }
}

// --- rendering ------------------------------------------------------------

function renderRuns() {
  const rows = [...state.runs.values()].reverse().map((run) => {
    const tr = document.createElement('tr');
    tr.dataset.runId = run.run_id;
    const name = run.state.replace('RUN_STATE_', '').toLowerCase();
    const progress = document.createElement('td');
    const bar = document.createElement('span');
    bar.className = 'bar';
    const fill = document.createElement('span');
    fill.style.width = `${Math.round(run.value * 100)}%`;
    bar.append(fill);
    progress.append(bar, ` ${Math.round(run.value * 100)}%`);
    const roadmap = state.roadmaps.get(run.run_id);
    tr.append(
      cell(shortId(run.run_id)),
      cell(shortId(run.project_id)),
      badge(name, name),
      progress,
      cell(run.files_total ? `${run.files_done}/${run.files_total}` : '', 'num'),
      cell(roadmap === undefined ? '' : `${roadmap} items`),
      cell(clock(run.time)),
    );
    if (run.error) tr.title = run.error;
    return tr;
  });
  fillTable('runs', rows);
}

function renderQueues() {
  const rows = [...state.queues.entries()].sort().map(([queue, depth]) => {
    const tr = document.createElement('tr');
    tr.append(cell(queue), cell(String(depth.messages), 'num'), cell(depth.consumers ?? '', 'num'));
    return tr;
  });
  fillTable('queues', rows);
}

function renderBreakers() {
  const rows = [...state.breakers.values()].map((breaker) => {
    const tr = document.createElement('tr');
    tr.append(cell(breaker.service), cell(breaker.upstream), badge(breaker.state, breaker.state), cell(clock(breaker.time)));
    return tr;
  });
  fillTable('breakers', rows);
}

function renderServices() {
  const rows = [...state.services.entries()].sort().map(([name, service]) => {
    const tr = document.createElement('tr');
    tr.append(
      cell(name),
      cell(number(service.request_rate), 'num'),
      cell(number(service.error_rate, 2), 'num'),
      cell(number(service.latency_p50_ms), 'num'),
      cell(number(service.latency_p99_ms), 'num'),
      cell(service.authz_denials === undefined ? '' : String(service.authz_denials), 'num'),
      cell(clock(service.time)),
    );
    return tr;
  });
  fillTable('services', rows);
}

function renderDenials() {
  const rows = state.denials.map((denial) => {
    const tr = document.createElement('tr');
    const caller = denial.caller ? denial.caller.replace(IDENTITY_SUFFIX, '') : 'no identity';
    const method = denial.method.slice(denial.method.lastIndexOf('/') + 1);
    tr.append(cell(clock(denial.time)), cell(denial.service), cell(caller), cell(method), cell(denial.reason));
    tr.title = `${denial.caller}\n${denial.method}\n${denial.reason}`;
    return tr;
  });
  fillTable('denials', rows);
}

function describe(update) {
  const parts = [update.event || update.metric_type];
  if (update.service) parts.push(update.service);
  if (update.run) parts.push(`run ${shortId(update.run.run_id)}`);
  for (const [key, value] of Object.entries(update.labels || {})) parts.push(`${key}=${value}`);
  return parts.join('  ');
}

function renderEvents() {
  const items = state.events.map(({ time, update }) => {
    const li = document.createElement('li');
    li.textContent = `${clock(time)}  ${describe(update)}`;
    return li;
  });
  $('events').replaceChildren(...items);
}

let scheduled = false;
function scheduleRender() {
  if (scheduled) return;
  scheduled = true;
  requestAnimationFrame(() => {
    scheduled = false;
    renderRuns();
    renderQueues();
    renderBreakers();
    renderServices();
    renderDenials();
    renderEvents();
    for (const chart of Object.values(charts)) {
      if (chart.dirty) chart.update('none');
      chart.dirty = false;
    }
    $('last-update').textContent = state.lastUpdate ? `last update ${clock(state.lastUpdate)}` : '';
  });
}

// --- connection -----------------------------------------------------------

function setConnection(text, kind) {
  const pill = $('connection');
  pill.textContent = text;
  pill.className = `pill pill-${kind}`;
}

let attempt = 0;
function connect() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  let acker = null;
  socket.addEventListener('open', () => {
    attempt = 0;
    setConnection('live', 'ok');
  });
  socket.addEventListener('message', (message) => {
    const data = JSON.parse(message.data);
    if (data.type === 'snapshot') {
      acker = createAcker((text) => socket.send(text), { window: data.window });
      data.updates.forEach(apply);
    } else if (data.type === 'update') {
      apply(data);
      acker?.received(data.sequence);
    }
    scheduleRender();
  });
  socket.addEventListener('close', (event) => {
    acker?.stop();
    attempt += 1;
    const delay = Math.min(30000, 500 * 2 ** Math.min(attempt, 6)) * (0.5 + Math.random() / 2);
    const why = event.code === 1013 ? 'too slow, reconnecting' : 'disconnected, reconnecting';
    setConnection(why, 'bad');
    setTimeout(connect, delay);
  });
}

connect();
