'use strict';
// Key presses -> POST /api/step, one at a time (up to 4 queued); each answer carries the new frame.
const $ = (id) => document.getElementById(id);
const MAX_QUEUE = 4;
const KEY_LABELS = {
  ' ': 'space', ArrowLeft: '\u2190', ArrowRight: '\u2192', ArrowUp: '\u2191', ArrowDown: '\u2193',
};
let info = null;
const queue = [];
let busy = false;
const latencies = [];  // ms per step request, the last 10

async function api(path, body) {
  const opts = body === undefined ? {} : {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify(body),
  };
  const response = await fetch(path, opts);
  const data = await response.json();
  if (!response.ok) throw new Error(data.detail || data.error || String(response.status));
  return data;
}

function fmt(x, digits) {
  return x === null || x === undefined ? '-' : Number(x).toFixed(digits);
}

function render(s) {
  $('frame').src = s.frame;
  $('counter').textContent = String(s.index);
  $('fps').textContent = s.model_ms === null ? '-' :
    `${fmt(s.model_ms, 1)} ms/frame (${fmt(1000 / s.model_ms, 0)} frames/s)`;
  $('reward').textContent = s.has_reward ? fmt(s.reward, 3) : 'no reward head';
  $('last-action').textContent = s.action === null ? '-' : info.actions[s.action];
  if (s.real_frame) {
    $('real').src = s.real_frame;
    $('real-done').textContent = s.real_done ? '(episode over)' : '';
  }
  $('real-reward').textContent = fmt(s.real_reward, 0);
  if (s.task !== null) $('task').value = s.task;
}

function showLatency(ms) {
  latencies.push(ms);
  if (latencies.length > 10) latencies.shift();
  const mean = latencies.reduce((a, b) => a + b, 0) / latencies.length;
  $('page-fps').textContent = `${fmt(mean, 1)} ms/frame (${fmt(1000 / mean, 0)} frames/s)`;
}

function setup(s) {
  info = s;
  $('run').textContent = `${s.phase} run: ${s.run}`;
  $('real-view').hidden = !s.real_env;
  $('real-reward-row').hidden = !(s.real_env && s.has_reward);
  $('seed').value = String(s.seed);
  const select = $('task');
  select.hidden = !s.has_reward;
  $('no-task').hidden = s.has_reward;
  for (const name of s.tasks) select.add(new Option(name, name));
  const legend = $('legend');
  s.actions.forEach((name) => {
    const keys = Object.keys(s.keys).filter((k) => s.keys[k] === name);
    const row = legend.insertRow();
    const shown = (k) => KEY_LABELS[k] || k;
    row.insertCell().innerHTML = keys.map((k) => `<kbd>${shown(k)}</kbd>`).join(' ');
    row.insertCell().textContent = name;
  });
}

async function pump() {
  if (busy) return;
  busy = true;
  try {
    while (queue.length) {
      const action = queue.shift();
      const start = performance.now();
      const s = await api('/api/step', {action});
      render(s);
      showLatency(performance.now() - start);
    }
    $('status').textContent = '';
  } catch (err) {
    queue.length = 0;
    $('status').textContent = err.message;
  } finally {
    busy = false;
  }
}

document.addEventListener('keydown', (e) => {
  if (!info || e.target.tagName === 'INPUT' || e.target.tagName === 'SELECT') return;
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  const name = info.keys[key];
  if (name === undefined) return;
  e.preventDefault();
  if (queue.length < MAX_QUEUE) queue.push(info.actions.indexOf(name));
  pump();
});

$('reset').addEventListener('click', async (e) => {
  e.currentTarget.blur();
  queue.length = 0;
  try {
    render(await api('/api/reset', {seed: parseInt($('seed').value, 10) || 0}));
    $('status').textContent = '';
  } catch (err) {
    $('status').textContent = err.message;
  }
});

$('task').addEventListener('change', async (e) => {
  try {
    render(await api('/api/task', {task: e.target.value}));
    e.target.blur();
  } catch (err) {
    $('status').textContent = err.message;
  }
});

api('/api/state').then((s) => { setup(s); render(s); })
  .catch((err) => { $('status').textContent = err.message; });
