// The mixpool dashboard: each page is drawn here from the REST API (/v1/…); the server only
// serves this script, the shell and the chart library. `body[data-state]` turns `ready` once
// a page has drawn its data (`error` when it could not), which the browser tests wait for.
'use strict';

// ---- helpers -------------------------------------------------------------------------

const main = () => document.getElementById('main');

/** An element: h('a', {href: '/'}, 'text', child, …). Strings are text, never HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'style') el.style.cssText = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const token = () => localStorage.getItem('mixpool_token') || '';

class ApiError extends Error {
  constructor(status, body) {
    const e = body && body.error;
    super(e ? `${e.code}: ${e.message}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

/** Calls the API; resolves to {status, body} for 2xx answers, throws ApiError otherwise. */
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, body);
  return { status: response.status, body };
}
const get = async (path) => (await api(path)).body;

/** Follows a job's server-sent events (read with fetch, so the token goes along) and calls
 *  onJob with each state of the job until it ends; resolves with the last one. */
async function followJob(id, onJob, signal) {
  const headers = token() ? { Authorization: `Bearer ${token()}` } : {};
  const response = await fetch(`/v1/jobs/${id}/events`, { headers, signal });
  if (!response.ok) throw new ApiError(response.status, await response.json().catch(() => null));
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '', last = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return last;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message', data = '';
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data += line.slice(5).trim();
      }
      if (event === 'job' && data) {
        last = JSON.parse(data);
        onJob(last);
      }
    }
  }
}

const fmt = {
  ppl: (x) => (x === null || x === undefined ? '—' : Number(x).toFixed(3)),
  num: (x) => (x === null || x === undefined ? '—' : Number(x).toLocaleString('en-US')),
  bytes(x) {
    if (x === null || x === undefined) return '—';
    const units = ['B', 'kB', 'MB', 'GB', 'TB'];
    let i = 0, v = Number(x);
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
  },
  time: (t) => (t ? new Date(t).toLocaleString() : '—'),
  seconds: (s) => (s === null || s === undefined ? '—' : `${Number(s).toFixed(1)} s`),
  weight: (w) => Number(w).toFixed(3).replace(/\.?0+$/, ''),
  mixture: (m) => m.map((e) => (m.length > 1 && Math.abs(e.weight - 1 / m.length) > 1e-9
    ? `${e.partition}×${fmt.weight(e.weight)}` : e.partition)).join(' + '),
};

const stateTag = (s) => h('span', { class: `state ${s || ''}` }, s || '—');
const bar = (fraction, attrs = {}) => h('div', Object.assign({ class: 'bar', role: 'progressbar',
  'aria-valuemin': 0, 'aria-valuemax': 1, 'aria-valuenow': fraction }, attrs),
  h('span', { style: `width:${(100 * fraction).toFixed(1)}%` }));
function setBar(el, fraction) {
  el.setAttribute('aria-valuenow', fraction);
  el.firstChild.style.width = `${(100 * fraction).toFixed(1)}%`;
}

function table(columns, rows, attrs = {}) {
  return h('div', { class: 'scroll' }, h('table', attrs,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', c.attrs || { class: c.num ? 'num' : null }, c.title)))),
    h('tbody', {}, rows.length ? rows.map((r) => h('tr', {}, columns.map((c) => h('td', { class: c.num ? 'num' : null }, c.cell(r)))))
      : h('tr', {}, h('td', { colspan: columns.length, class: 'muted' }, 'Nothing here yet.')))));
}

function meta(pairs) {
  return h('dl', { class: 'meta' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

/** An ECharts chart in `el`, resized with the window; returns the instance. Drawn at once,
 *  without animation: the data is the point, and a page is ready when it is drawn. */
function chart(el, option) {
  const c = echarts.init(el);
  c.setOption(Object.assign({ animation: false }, option));
  window.addEventListener('resize', () => c.resize());
  return c;
}

function render(...nodes) {
  main().replaceChildren(...nodes.flat(Infinity));
}

const ready = () => { document.body.dataset.state = 'ready'; };

/** Re-runs `fn` every `ms` while the page is shown (every link loads a new page). */
const every = (ms, fn) => setInterval(fn, ms);

async function evalSets() {
  return (await get('/v1/eval-sets?limit=500')).items;
}

function evalPicker(sets, selected, onchange) {
  return h('label', {}, 'Eval set', h('select', { id: 'eval', onchange },
    sets.map((s) => h('option', { value: s.name, selected: s.name === selected }, s.name))));
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
  return q.toString();
}

/** The page's query string as an object, and a way to change it without reloading. */
const here = () => Object.fromEntries(new URLSearchParams(location.search));
function setHere(params) {
  history.replaceState(null, '', `${location.pathname}?${query(params)}`);
}

// ---- pages ---------------------------------------------------------------------------

async function overview() {
  const o = await get('/v1/overview');
  const c = o.counts;
  const units = c.unit_models;
  const card = (value, label) => h('div', { class: 'card' }, h('div', { class: 'value' }, fmt.num(value)), h('div', { class: 'label' }, label));
  const totalUnits = Object.values(units).reduce((a, b) => a + b, 0);
  const queue = Object.entries(o.queue).map(([kind, s]) => ({ kind, queued: s.queued || 0, running: s.running || 0 }));
  render(
    h('h1', {}, 'Overview'),
    h('div', { class: 'cards', id: 'counts' },
      card(c.bases, 'bases'), card(c.partitions, 'partitions'),
      card(totalUnits, `unit models (${Object.entries(units).map(([s, n]) => `${n} ${s}`).join(', ') || 'none'})`),
      card(c.eval_sets, 'eval sets'), card(c.scores, 'cached scores'), card(c.sweeps, 'sweeps'),
      card(c.validations, 'validations'), card(c.searches, 'searches')),
    h('h2', {}, 'Defaults'),
    meta([
      ['Base', o.default_base ? o.default_base.name : 'none ready yet'],
      ['Recipe', o.default_recipe ? `${o.default_recipe.name}: ${fmt.num(o.default_recipe.config.tokens)} tokens per unit, lr ${o.default_recipe.config.lr}, ${o.default_recipe.config.schedule}` : 'none yet'],
    ]),
    h('h2', {}, 'Queue'),
    table([
      { title: 'Kind', cell: (r) => h('a', { href: `/jobs?kind=${r.kind}` }, r.kind) },
      { title: 'Queued', num: true, cell: (r) => r.queued },
      { title: 'Running', num: true, cell: (r) => r.running },
    ], queue, { id: 'queue' }),
    h('h2', {}, 'Workers seen in the last 15 s'),
    table([
      { title: 'Worker', cell: (w) => w.name },
      { title: 'Device', cell: (w) => w.device },
      { title: 'Kinds', cell: (w) => w.kinds.join(', ') },
      { title: 'Running', cell: (w) => (w.job_id ? [w.job_kind, ' ', bar(w.job_progress || 0)] : h('span', { class: 'muted' }, 'idle')) },
      { title: 'Up since', cell: (w) => fmt.time(w.started_at) },
    ], o.workers, { id: 'workers' }),
  );
}

async function partitions() {
  const params = here();
  const overview = await get('/v1/overview');
  const cursors = [];
  let cursor = params.cursor || '';
  const search = h('input', { id: 'search', type: 'search', placeholder: 'name contains…', value: params.q || '' });
  const domain = h('select', { id: 'domain' }, h('option', { value: '' }, 'every domain'),
    overview.domains.filter((d) => d.domain !== null).map((d) => h('option', { value: d.domain, selected: d.domain === params.domain }, `${d.domain} (${d.partitions})`)));
  const body = h('div', {});
  const prev = h('button', { class: 'secondary', id: 'prev', disabled: true }, '← Newer');
  const next = h('button', { class: 'secondary', id: 'next', disabled: true }, 'Older →');
  async function load() {
    document.body.dataset.state = 'loading';
    setHere({ q: search.value, domain: domain.value });
    const page = await get(`/v1/partitions?${query({ q: search.value, domain: domain.value, cursor, limit: 50 })}`);
    body.replaceChildren(table([
      { title: 'Name', cell: (p) => h('a', { href: `/partitions/${encodeURIComponent(p.name)}` }, p.name) },
      { title: 'Domain', cell: (p) => p.domain || '—' },
      { title: 'Documents', num: true, cell: (p) => fmt.num(p.documents) },
      { title: 'Bytes', num: true, cell: (p) => fmt.bytes(p.bytes) },
      { title: 'Tokens', num: true, cell: (p) => fmt.num(p.unit_model && p.unit_model.data_tokens) },
      { title: 'Unit model', cell: (p) => (p.unit_model ? h('a', { href: `/models/${p.unit_model.id}` }, stateTag(p.unit_model.state)) : h('span', { class: 'muted' }, 'none')) },
      { title: 'Added', cell: (p) => fmt.time(p.created_at) },
    ], page.items, { id: 'partitions' }));
    prev.disabled = cursors.length === 0;
    next.disabled = !page.next;
    next.onclick = () => { cursors.push(cursor); cursor = page.next; load().then(ready, fail); };
    prev.onclick = () => { cursor = cursors.pop() || ''; load().then(ready, fail); };
  }
  let typing;
  search.addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => { cursor = ''; cursors.length = 0; load().then(ready, fail); }, 250);
  });
  domain.addEventListener('change', () => { cursor = ''; cursors.length = 0; load().then(ready, fail); });
  render(h('h1', {}, 'Partitions'),
    h('div', { class: 'controls' }, h('label', {}, 'Search', search), h('label', {}, 'Domain', domain)),
    body, h('div', { class: 'pager' }, prev, next));
  await load();
}

async function names(path) {
  const map = {};
  for (const item of (await get(`${path}?limit=500`)).items) map[item.id] = item.name;
  return map;
}

async function partition(key) {
  const [p, bases, recipes] = await Promise.all([get(`/v1/partitions/${encodeURIComponent(key)}`), names('/v1/bases'), names('/v1/recipes')]);
  const part = p.partition;
  render(
    h('h1', {}, `Partition ${part.name}`),
    meta([
      ['Id', part.id], ['Domain', part.domain || '—'], ['Tags', part.tags.join(', ') || '—'],
      ['Documents', fmt.num(part.documents)], ['Bytes', fmt.bytes(part.bytes)],
      ['sha256', part.sha256], ['Added', fmt.time(part.created_at)],
    ]),
    h('h2', {}, 'Unit models'),
    table([
      { title: 'Model', cell: (m) => h('a', { href: `/models/${m.id}` }, m.id.slice(0, 8)) },
      { title: 'Base', cell: (m) => bases[m.base_id] || m.base_id },
      { title: 'Recipe', cell: (m) => recipes[m.recipe_id] || m.recipe_id },
      { title: 'State', cell: (m) => stateTag(m.state) },
      { title: 'Job', cell: (m) => (m.job_id ? h('code', {}, m.job_id.slice(0, 8)) : '—') },
      { title: 'Created', cell: (m) => fmt.time(m.created_at) },
    ], p.models, { id: 'models' }),
  );
}

async function model(id) {
  const m = await get(`/v1/models/${encodeURIComponent(id)}`);
  const train = (m.job && m.job.result && m.job.result.train) || null;
  const el = h('div', { class: 'chart', id: 'loss-chart' });
  const partitionName = m.partition ? m.partition.name : m.model.partition_id;
  const download = m.model.state === 'ready' && m.base && m.recipe
    ? h('a', { id: 'download', href: `/v1/mixtures/export?${query({ partitions: partitionName, base: m.base.name, recipe: m.recipe.name, wait: 600 })}` }, 'Download as a Hugging Face directory (.tar)')
    : h('span', { class: 'muted' }, 'downloadable once trained');
  const info = h('div', {});
  function describe(m) {
    const job = m.job;
    const t = (job && job.result && job.result.train) || train;
    info.replaceChildren(meta([
      ['Partition', m.partition ? h('a', { href: `/partitions/${encodeURIComponent(m.partition.name)}` }, m.partition.name) : '—'],
      ['Base', m.base ? m.base.name : '—'],
      ['Recipe', m.recipe ? `${m.recipe.name}` : '—'],
      ['State', stateTag(m.model.state)],
      ['Job', job ? [stateTag(job.state), ' ', bar(job.progress), ' ', job.message || ''] : '—'],
      ['Steps', t ? fmt.num(t.steps) : '—'],
      ['Tokens trained', t ? fmt.num(t.tokens) : '—'],
      ['Tokens/s', t ? fmt.num(Math.round(t.tokens_per_sec)) : '—'],
      ['Duration', t ? fmt.seconds(t.seconds) : (job && job.started_at ? `running since ${fmt.time(job.started_at)}` : '—')],
      ['Final loss', t ? t.final_loss.toFixed(4) : '—'],
      ['Checkpoint', download],
    ]));
  }
  describe(m);
  render(h('h1', {}, `Unit model of ${partitionName}`), info,
    h('h2', {}, 'Training loss'), el,
    m.recipe ? [h('h2', {}, 'Recipe'), h('pre', { class: 'json' }, JSON.stringify(m.recipe.config, null, 2))] : []);
  const c = chart(el, {
    tooltip: { trigger: 'axis' },
    grid: { left: 50, right: 20, top: 20, bottom: 40 },
    xAxis: { type: 'value', name: 'step', nameLocation: 'middle', nameGap: 25 },
    yAxis: { type: 'value', name: 'loss', scale: true },
    series: [{ type: 'line', name: 'loss', showSymbol: m.loss.length < 80, data: m.loss }],
  });
  if (m.job && (m.job.state === 'running' || m.job.state === 'queued')) {
    every(2000, async () => {
      const now = await get(`/v1/models/${encodeURIComponent(id)}`);
      describe(now);
      c.setOption({ series: [{ data: now.loss }] });
    });
  }
}

async function jobs() {
  const params = here();
  const stateSel = h('select', { id: 'state' }, ['', 'queued', 'running', 'succeeded', 'failed', 'cancelled']
    .map((s) => h('option', { value: s, selected: s === (params.state || '') }, s || 'every state')));
  // The job kinds the server registers, which it writes into the page.
  const kinds = (document.body.dataset.kinds || '').split(',').filter((k) => k);
  const kindSel = h('select', { id: 'kind' }, ['', ...kinds]
    .map((k) => h('option', { value: k, selected: k === (params.kind || '') }, k || 'every kind')));
  const body = h('div', {});
  const controllers = [];
  async function load() {
    controllers.splice(0).forEach((c) => c.abort());
    setHere({ state: stateSel.value, kind: kindSel.value });
    const page = await get(`/v1/jobs?${query({ state: stateSel.value, kind: kindSel.value, limit: 50 })}`);
    const rows = page.items;
    body.replaceChildren(table([
      { title: 'Job', cell: (j) => h('code', {}, j.id.slice(0, 8)) },
      { title: 'Kind', cell: (j) => (j.partition ? [j.kind, ' · ', h('a', { href: `/partitions/${encodeURIComponent(j.partition)}` }, j.partition)] : j.kind) },
      { title: 'State', cell: (j) => h('span', { 'data-job-state': j.id }, stateTag(j.state)) },
      { title: 'Progress', cell: (j) => bar(j.progress, { 'data-job': j.id }) },
      { title: 'Message', cell: (j) => h('span', { 'data-job-message': j.id }, j.message || '', j.loss !== null ? ` · loss ${j.loss.toFixed(3)}` : '') },
      { title: 'Attempts', num: true, cell: (j) => (j.strikes ? `${j.attempts}, ${j.strikes} of ${j.max_attempts} allowed failures` : `${j.attempts}`) },
      { title: 'Created', cell: (j) => fmt.time(j.created_at) },
      { title: 'Error', cell: (j) => (j.error ? h('details', { class: 'err' }, h('summary', {}, 'error'), h('pre', {}, j.error)) : '') },
      { title: '', cell: (j) => (j.state === 'queued' || j.state === 'running'
        ? h('button', { class: 'secondary', 'data-cancel': j.id, onclick: (e) => cancel(j.id, e.target) }, 'Cancel') : '') },
    ], rows, { id: 'jobs' }));
    for (const job of rows.filter((j) => j.state === 'queued' || j.state === 'running')) {
      const controller = new AbortController();
      controllers.push(controller);
      followJob(job.id, (j) => {
        const b = body.querySelector(`[data-job="${j.id}"]`);
        if (b) setBar(b, j.progress);
        const s = body.querySelector(`[data-job-state="${j.id}"]`);
        if (s) s.replaceChildren(stateTag(j.state));
        const m = body.querySelector(`[data-job-message="${j.id}"]`);
        if (m) m.textContent = (j.message || '') + (j.loss !== null ? ` · loss ${j.loss.toFixed(3)}` : '');
      }, controller.signal).catch((e) => { if (e.name !== 'AbortError') console.warn(`job ${job.id}: ${e.message}`); });
    }
  }
  async function cancel(id, button) {
    button.disabled = true;
    try {
      await api(`/v1/jobs/${id}/cancel`, { method: 'POST' });
    } catch (e) {
      button.disabled = false;
      alertBox(e.status === 401 || e.status === 403 ? `${e.message} — set a token with the write scope (top right)` : e.message);
    }
  }
  stateSel.addEventListener('change', () => load().then(ready, fail));
  kindSel.addEventListener('change', () => load().then(ready, fail));
  render(h('h1', {}, 'Jobs'), h('div', { class: 'controls' }, h('label', {}, 'State', stateSel), h('label', {}, 'Kind', kindSel),
    h('button', { class: 'secondary', onclick: () => load().then(ready, fail) }, 'Refresh')),
  h('p', { id: 'notice', class: 'error' }), body);
  await load();
}

function alertBox(message) {
  const n = document.getElementById('notice');
  if (n) n.textContent = message;
}

async function explorer() {
  const params = here();
  const sets = await evalSets();
  const list = h('div', { class: 'picklist', id: 'picklist' });
  const search = h('input', { id: 'pick-search', type: 'search', placeholder: 'filter partitions…' });
  const weighting = h('select', { id: 'weighting' }, ['uniform', 'tokens', 'explicit'].map((w) => h('option', { value: w }, w)));
  const picked = new Map((params.partitions || '').split(',').filter(Boolean).map((p) => [p, 1]));
  const result = h('div', { id: 'result', class: 'result' });
  async function loadList() {
    const page = await get(`/v1/partitions?${query({ q: search.value, limit: 200 })}`);
    list.replaceChildren(...page.items.map((p) => {
      const box = h('input', { type: 'checkbox', value: p.name, checked: picked.has(p.name), 'data-partition': p.name });
      const weight = h('input', { type: 'number', min: 0, step: 'any', value: picked.get(p.name) || 1, 'data-weight': p.name, title: 'weight (explicit weighting)' });
      box.addEventListener('change', () => { if (box.checked) picked.set(p.name, Number(weight.value)); else picked.delete(p.name); });
      weight.addEventListener('change', () => { if (picked.has(p.name)) picked.set(p.name, Number(weight.value)); });
      const state = p.unit_model ? p.unit_model.state : 'untrained';
      return h('label', {}, box, p.name, h('span', { class: 'muted' }, state === 'ready' ? '' : `(${state})`), weight);
    }));
    if (page.next) list.append(h('p', { class: 'muted' }, 'More partitions match: filter by name to find them.'));
  }
  let typing;
  search.addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(() => loadList().catch(fail), 250); });
  const eval_ = evalPicker(sets, params.eval);
  const go = h('button', { id: 'score', onclick: () => score().catch((e) => { result.replaceChildren(h('p', { class: 'error' }, e.message)); go.disabled = false; }) }, 'Score');
  async function score() {
    if (!picked.size) { result.replaceChildren(h('p', { class: 'error' }, 'Pick at least one partition.')); return; }
    go.disabled = true;
    const names = [...picked.keys()];
    const q = { partitions: names.join(','), eval: eval_.querySelector('select').value, wait: 2, base: params.base, recipe: params.recipe };
    if (weighting.value === 'explicit') q.weights = names.map((n) => picked.get(n)).join(',');
    else q.weighting = weighting.value;
    setHere({ partitions: q.partitions, eval: q.eval, base: params.base, recipe: params.recipe });
    // Asked again once the jobs it waits on end: then the score comes from the cache, but
    // it was computed for this request.
    let waited = false;
    for (;;) {
      const { status, body } = await api(`/v1/score?${query(q)}`);
      if (status === 200) { showScore(body, body.cached && !waited); break; }
      waited = true;
      // 202: the score's job, or the unit models' trainings, are still running.
      const waiting = body.job ? [{ job: body.job.id, what: 'merging and evaluating' }]
        : body.training.map((t) => ({ job: t.job, what: `training ${t.partition}` }));
      const bars = waiting.map((w) => ({ w, el: bar(0) }));
      result.replaceChildren(h('p', { class: 'muted', id: 'waiting' }, 'Not cached: computing…'),
        ...bars.map(({ w, el }) => h('div', { class: 'controls' }, el, w.what)));
      await Promise.all(bars.map(({ w, el }) => w.job && followJob(w.job, (j) => setBar(el, j.progress))));
    }
    go.disabled = false;
  }
  function showScore(s, cached) {
    if (s.per_task) return showQuestions(s, cached);
    const domains = Object.entries(s.per_domain || {}).sort();
    const el = h('div', { class: 'chart', id: 'domain-chart', style: 'height:260px' });
    result.replaceChildren(...[
      h('div', { class: 'value', id: 'perplexity', 'data-value': s.perplexity }, fmt.ppl(s.perplexity)),
      h('p', {}, `perplexity on ${s.eval_set} · ${fmt.ppl(s.bits_per_byte)} bits per byte · ${fmt.num(s.tokens)} tokens · `,
        h('strong', { id: 'cached', 'data-cached': String(cached) }, cached ? 'served from the cache' : 'computed now')),
      h('p', { class: 'muted' }, `${fmt.mixture(s.mixture)} · base ${s.base}, recipe ${s.recipe}`),
      domains.length ? [h('h2', {}, 'Per domain'), table([
        { title: 'Domain', cell: ([d]) => d },
        { title: 'Perplexity', num: true, cell: ([, r]) => fmt.ppl(r.perplexity) },
        { title: 'Bits per byte', num: true, cell: ([, r]) => fmt.ppl(r.bits_per_byte) },
        { title: 'Documents', num: true, cell: ([, r]) => fmt.num(r.documents) },
      ], domains, { id: 'per-domain' }), el] : []].flat());
    if (domains.length) {
      chart(el, {
        tooltip: {}, grid: { left: 50, right: 20, top: 20, bottom: 70 },
        xAxis: { type: 'category', data: domains.map(([d]) => d), axisLabel: { rotate: 30 } },
        yAxis: { type: 'value', name: 'perplexity', scale: true },
        series: [{ type: 'bar', data: domains.map(([, r]) => r.perplexity) }],
      });
    }
  }
  // A set of multiple-choice questions: accuracy and bits per byte of the gold answers, per task.
  function showQuestions(s, cached) {
    const tasks = Object.entries(s.per_task).sort();
    const el = h('div', { class: 'chart', id: 'task-chart', style: 'height:260px' });
    result.replaceChildren(...[
      h('div', { class: 'value', id: 'accuracy', 'data-value': s.accuracy }, `${(s.accuracy * 100).toFixed(1)}%`),
      h('p', {}, `accuracy on ${s.eval_set} (${fmt.num(s.n)} questions; ${(s.accuracy_raw * 100).toFixed(1)}% by raw log-likelihood) · ${fmt.ppl(s.bits_per_byte_gold)} bits per byte of the gold answers · `,
        h('strong', { id: 'cached', 'data-cached': String(cached) }, cached ? 'served from the cache' : 'computed now')),
      h('p', { class: 'muted' }, `${fmt.mixture(s.mixture)} · base ${s.base}, recipe ${s.recipe}`),
      h('h2', {}, 'Per task'), table([
        { title: 'Task', cell: ([t]) => t },
        { title: 'Accuracy', num: true, cell: ([, r]) => `${(r.accuracy * 100).toFixed(1)}%` },
        { title: 'Accuracy (raw ll)', num: true, cell: ([, r]) => `${(r.accuracy_raw * 100).toFixed(1)}%` },
        { title: 'Bits per byte, gold', num: true, cell: ([, r]) => fmt.ppl(r.bits_per_byte_gold) },
        { title: 'Questions', num: true, cell: ([, r]) => fmt.num(r.n) },
      ], tasks, { id: 'per-task' }), el]);
    chart(el, {
      tooltip: {}, grid: { left: 50, right: 20, top: 20, bottom: 70 },
      xAxis: { type: 'category', data: tasks.map(([t]) => t), axisLabel: { rotate: 30 } },
      yAxis: { type: 'value', name: 'accuracy', min: 0, max: 1 },
      series: [{ type: 'bar', data: tasks.map(([, r]) => r.accuracy) }],
    });
  }
  render(h('h1', {}, 'Mixture explorer'),
    h('div', { class: 'explorer' },
      h('div', {}, h('div', { class: 'controls' }, h('label', {}, 'Partitions', search)), list),
      h('div', {}, h('div', { class: 'controls' }, eval_, h('label', {}, 'Weighting', weighting), go), result)));
  await loadList();
}

async function leaderboard() {
  const params = here();
  const sets = await evalSets();
  if (!sets.length) { render(h('h1', {}, 'Leaderboard'), h('p', { class: 'muted' }, 'No eval sets yet.')); return; }
  let sort = params.sort || 'perplexity', order = params.order || 'asc', offset = 0;
  const eval_ = evalPicker(sets, params.eval, () => { offset = 0; load().then(ready, fail); });
  const size = h('input', { id: 'size', type: 'number', min: 1, placeholder: 'any', value: params.size || '', style: 'width:6rem',
    onchange: () => { offset = 0; load().then(ready, fail); } });
  const body = h('div', {});
  const pager = h('div', { class: 'pager' });
  const sortable = (key, title) => ({ title, num: key !== 'created', attrs: { class: 'sortable', 'data-sort': key, 'data-order': key === sort ? order : null,
    // A new column starts best first: the highest accuracy, the lowest of the rest.
    onclick: () => { order = key === sort ? (order === 'asc' ? 'desc' : 'asc') : (key === 'accuracy' ? 'desc' : 'asc'); sort = key; offset = 0; load().then(ready, fail); } } });
  async function load() {
    document.body.dataset.state = 'loading';
    const q = { eval: eval_.querySelector('select').value, sort, order, size: size.value, limit: 50, offset, base: params.base, recipe: params.recipe };
    setHere(q);
    const b = await get(`/v1/leaderboard?${query(q)}`);
    // A set of questions ranks by its own figures too.
    const questions = b.items.some((r) => r.accuracy != null);
    body.replaceChildren(
      h('p', { class: 'muted' }, `${fmt.num(b.total)} scored mixtures on ${b.eval_set} (base ${b.base}, recipe ${b.recipe}).`),
      table([
        { title: '#', num: true, cell: (r) => r.rank },
        { title: 'Mixture', cell: (r) => h('a', { href: `/explorer?${query({ partitions: r.mixture.map((m) => m.partition).join(','), eval: b.eval_set, base: b.base, recipe: b.recipe })}` }, fmt.mixture(r.mixture)) },
        Object.assign(sortable('size', 'Size'), { cell: (r) => r.size }),
        { title: 'Weighting', cell: (r) => r.weighting },
        Object.assign(sortable('perplexity', 'Perplexity'), { cell: (r) => h('span', { 'data-value': r.perplexity }, fmt.ppl(r.perplexity)) }),
        Object.assign(sortable('bits_per_byte', 'Bits per byte'), { cell: (r) => fmt.ppl(r.bits_per_byte) }),
        ...(questions ? [
          Object.assign(sortable('accuracy', 'Accuracy'), { cell: (r) => `${(r.accuracy * 100).toFixed(1)}%` }),
          Object.assign(sortable('bits_per_byte_gold', 'Bits/byte, gold'), { cell: (r) => fmt.ppl(r.bits_per_byte_gold) }),
        ] : [{ title: 'Macro ppl', num: true, cell: (r) => fmt.ppl(r.macro_perplexity) }]),
        Object.assign(sortable('created', 'Scored'), { cell: (r) => fmt.time(r.created_at) }),
      ], b.items.map((r, i) => Object.assign({ rank: b.offset + i + 1 }, r)), { id: 'leaderboard' }));
    pager.replaceChildren(
      h('button', { class: 'secondary', id: 'prev', disabled: offset === 0, onclick: () => { offset = Math.max(0, offset - 50); load().then(ready, fail); } }, '← Better'),
      h('span', { class: 'muted' }, `${fmt.num(Math.min(b.total, offset + 1))}–${fmt.num(Math.min(b.total, offset + b.items.length))} of ${fmt.num(b.total)}`),
      h('button', { class: 'secondary', id: 'next', disabled: offset + b.items.length >= b.total, onclick: () => { offset += 50; load().then(ready, fail); } }, 'Worse →'));
  }
  render(h('h1', {}, 'Leaderboard'), h('div', { class: 'controls' }, eval_, h('label', {}, 'Partitions per mixture', size)), body, pager);
  await load();
}

async function heatmap() {
  const params = here();
  const [sets, overview] = await Promise.all([evalSets(), get('/v1/overview')]);
  if (!sets.length) { render(h('h1', {}, 'Heatmap'), h('p', { class: 'muted' }, 'No eval sets yet.')); return; }
  const eval_ = evalPicker(sets, params.eval, () => load().then(ready, fail));
  const domain = h('select', { id: 'domain', onchange: () => load().then(ready, fail) }, h('option', { value: '' }, 'every domain'),
    overview.domains.filter((d) => d.domain !== null).map((d) => h('option', { value: d.domain, selected: d.domain === params.domain }, d.domain)));
  const limit = h('input', { id: 'limit', type: 'number', min: 1, max: 100, value: params.limit || 30, style: 'width:6rem', onchange: () => load().then(ready, fail) });
  const note = h('p', { class: 'muted', id: 'heatmap-note' });
  const el = h('div', { class: 'chart square', id: 'heatmap-chart' });
  render(h('h1', {}, 'Pairwise merges'), h('div', { class: 'controls' }, eval_, h('label', {}, 'Domain', domain), h('label', {}, 'Partitions (first by name)', limit)), note, el);
  const c = chart(el, {});
  async function load() {
    document.body.dataset.state = 'loading';
    const q = { eval: eval_.querySelector('select').value, domain: domain.value, limit: limit.value, base: params.base, recipe: params.recipe };
    setHere(q);
    const m = await get(`/v1/heatmap?${query(q)}`);
    const values = m.cells.map((cell) => cell[2]);
    if (!m.partitions.length) {
      c.clear();
      note.textContent = `No partition${domain.value ? ` of ${domain.value}` : ''} has a trained unit model for base ${m.base} and recipe ${m.recipe} yet.`;
      return;
    }
    note.textContent = `Perplexity on ${m.eval_set} of the uniform merge of each pair (the diagonal: the unit model alone); `
      + `${fmt.num(m.cells.length)} of ${fmt.num(m.cells.length + m.missing)} pairs scored`
      + (m.missing ? ' — a sweep with sizes 1 to 2 scores the rest.' : '.');
    c.clear();
    c.setOption({
      animation: false,
      tooltip: { formatter: (p) => `${m.partitions[p.value[1]]} + ${m.partitions[p.value[0]]}<br>perplexity ${fmt.ppl(p.value[2])}` },
      grid: { left: 120, right: 30, top: 10, bottom: 130 },
      xAxis: { type: 'category', data: m.partitions, axisLabel: { rotate: 60, interval: m.partitions.length > 40 ? 'auto' : 0 } },
      yAxis: { type: 'category', data: m.partitions, inverse: true, axisLabel: { interval: m.partitions.length > 40 ? 'auto' : 0 } },
      visualMap: { min: values.length ? Math.min(...values) : 0, max: values.length ? Math.max(...values) : 1, calculable: true,
        orient: 'horizontal', left: 'center', bottom: 0, inRange: { color: ['#1a9850', '#fee08b', '#d73027'] } },
      // [column, row, perplexity]: ECharts' x first.
      series: [{ type: 'heatmap', data: m.cells.map(([row, column, ppl]) => [column, row, ppl]), progressive: 0,
        label: { show: m.partitions.length <= 12, formatter: (p) => fmt.ppl(p.value[2]) } }],
    });
  }
  await load();
}

async function sweeps() {
  const page = await get('/v1/sweeps?limit=100');
  render(h('h1', {}, 'Sweeps'), table([
    { title: 'Sweep', cell: (s) => h('a', { href: `/sweeps/${s.id}` }, s.id.slice(0, 8)) },
    { title: 'State', cell: (s) => stateTag(s.state) },
    { title: 'Progress', cell: (s) => [bar(s.progress.fraction), ` ${s.progress.scored} / ${s.progress.total}`] },
    { title: 'Mixtures', num: true, cell: (s) => fmt.num(s.mixtures) },
    { title: 'Eval sets', cell: (s) => s.eval_sets.join(', ') },
    { title: 'Weighting', cell: (s) => s.weighting },
    { title: 'Created', cell: (s) => fmt.time(s.created_at) },
  ], page.items, { id: 'sweeps' }));
}

async function sweep(id) {
  const body = h('div', {});
  async function load() {
    const s = await get(`/v1/sweeps/${encodeURIComponent(id)}?limit=25`);
    body.replaceChildren(...[
      meta([['State', stateTag(s.state)], ['Progress', [bar(s.progress.fraction, { id: 'sweep-progress' }), ` ${s.progress.scored} of ${s.progress.total} mixture × eval set pairs`]],
        ['Base', s.base], ['Recipe', s.recipe], ['Weighting', s.weighting], ['Created', fmt.time(s.created_at)]]),
      (s.results || []).map((r) => [
        h('h2', {}, `${r.eval_set}: ${r.scored} scored`, r.best ? ` — best ${fmt.mixture(r.best.mixture)} at ${fmt.ppl(r.best.perplexity)}` : ''),
        table([
          { title: '#', num: true, cell: (x) => x.rank },
          { title: 'Mixture', cell: (x) => fmt.mixture(x.mixture) },
          { title: 'Perplexity', num: true, cell: (x) => fmt.ppl(x.perplexity) },
          { title: 'Bits per byte', num: true, cell: (x) => fmt.ppl(x.bits_per_byte) },
          { title: 'Macro ppl', num: true, cell: (x) => fmt.ppl(x.macro_perplexity) },
        ], r.ranking, { class: 'ranking' })])].flat(Infinity));
    return s;
  }
  render(h('h1', {}, `Sweep ${id.slice(0, 8)}`), body);
  const s = await load();
  if (s.state === 'running' || s.state === 'queued') every(2000, () => load().catch(fail));
}

async function searches() {
  const page = await get('/v1/searches?limit=100');
  render(h('h1', {}, 'Ratio searches'),
    h('p', { class: 'muted' }, 'Mixture weights searched by merged evaluations alone (POST /v1/searches, or mixpool search).'),
    table([
      { title: 'Search', cell: (s) => h('a', { href: `/searches/${s.id}` }, s.id.slice(0, 8)) },
      { title: 'State', cell: (s) => stateTag(s.state) },
      { title: 'Progress', cell: (s) => [bar(s.progress.fraction), ` ${s.progress.evaluated} / ${s.progress.total}`] },
      { title: 'Partitions', cell: (s) => s.partitions.join(', ') },
      { title: 'Objective', cell: (s) => Object.entries(s.objective).filter(([, w]) => w > 0).map(([e, w]) => `${e}×${fmt.weight(w)}`).join(' + ') },
      { title: 'Best', num: true, cell: (s) => (s.best ? fmt.ppl(s.best.objective) : '—') },
      { title: 'Created', cell: (s) => fmt.time(s.created_at) },
    ], page.items, { id: 'searches' }));
}

async function search(id) {
  const body = h('div', {});
  const el = h('div', { class: 'chart', id: 'search-chart' });
  render(h('h1', {}, `Search ${id.slice(0, 8)}`), body, h('h2', {}, 'Objective of each point, in the order evaluated'), el);
  const c = chart(el, {});
  async function load() {
    const s = await get(`/v1/searches/${encodeURIComponent(id)}`);
    const weights = (w) => s.partitions.map((p) => `${p} ${fmt.weight(w[p])}`).join(' · ');
    // A gradient search's points rank by the tune halves' objective, which chose them.
    const gradient = s.method === 'gradient';
    const rank = gradient ? 'tune_objective' : 'objective';
    const rows = (s.points || []).slice().sort((a, b) => (a[rank] ?? Infinity) - (b[rank] ?? Infinity));
    body.replaceChildren(...[
      meta([['State', stateTag(s.state)], ['Progress', [bar(s.progress.fraction, { id: 'search-progress' }), ` ${s.progress.evaluated} of ${s.progress.total} points`]],
        ['Method', gradient ? `gradient, ${s.budget} steps, tuned on ${s.tune_sets.join(', ')}` : `sample, budget ${s.budget}, seed ${s.seed}`], ['Proxy', s.proxy], ['Base, recipe', `${s.base}, ${s.recipe}`],
        ['Objective', Object.entries(s.objective).map(([e, w]) => `${fmt.weight(w)} × ln ppl(${e})`).join(' + ')],
        ['Bounds', s.partitions.map((p) => `${p} [${s.bounds[p].map(fmt.weight).join(', ')}]`).join(' · ')],
        ['Prior', weights(s.prior)],
        ...(s.references || []).map((r) => [r.role === 'natural' ? 'Natural mixture' : 'Uniform mixture', `${weights(r.weights)} — objective ${fmt.ppl(r.objective)}${gradient ? ` (tune objective ${fmt.ppl(r.tune_objective)})` : ''}`]),
        gradient ? ['Backward passes', s.gradient_passes ?? '—']
          : ['Predictor', s.fit ? `cross-validated Spearman ρ ${s.fit.cv_spearman === null ? '—' : s.fit.cv_spearman.toFixed(3)} over ${s.fit.n} points (ridge λ ${s.fit.lambda})${s.fit.trusted === false ? ', not trusted: the proposal is the best point seen' : ''}${s.fit.trust_radius == null ? '' : `; trust region ${fmt.weight(s.fit.trust_radius)}`}` : '—'],
        ['Proposal', s.proposal ? `${weights(s.proposal.weights)} — objective ${fmt.ppl(s.proposal.objective)} (${gradient ? `tune objective ${fmt.ppl(s.proposal.tune_objective)}` : `predicted ${fmt.ppl(s.proposal.predicted)}`})` : '—'],
        s.answer ? ['Answer', `${weights(s.answer.weights)} — objective ${fmt.ppl(s.answer.objective)}${gradient ? ` (tune objective ${fmt.ppl(s.answer.tune_objective)})` : ''}${s.answer.checked_objective == null ? '' : ` by ${s.proxy}, ${fmt.ppl(s.answer.checked_objective)} by the check`}; the ${s.answer.role} point${s.answer.checked_objective == null ? '' : ` best of ${s.checked.points.length} final candidates`}, chosen by ${s.answer.proxy}`]
          : ['Best evaluated', s.best ? `${weights(s.best.weights)} — objective ${fmt.ppl(s.best.objective)}` : '—']]),
      h('h2', {}, 'Points, best first'),
      table([
        { title: '#', num: true, cell: (p) => p.position },
        { title: 'Round', num: true, cell: (p) => p.round },
        { title: 'Role', cell: (p) => p.role },
        ...(gradient ? [{ title: 'Tune objective', num: true, cell: (p) => fmt.ppl(p.tune_objective) }] : []),
        { title: 'Objective', num: true, cell: (p) => fmt.ppl(p.objective) },
        ...s.eval_sets.map((e) => ({ title: `ppl ${e}`, num: true, cell: (p) => fmt.ppl(p.perplexity[e]) })),
        ...s.partitions.map((n) => ({ title: n, num: true, cell: (p) => fmt.weight(p.weights[n]) })),
      ], rows, { id: 'points' })].flat(Infinity));
    const points = (s.points || []).filter((p) => p.objective !== null);
    const own = points.filter((p) => p.role !== 'natural' && p.role !== 'uniform');
    const references = ['natural', 'uniform'].map((role) => ({ type: 'scatter', name: role, symbol: 'diamond', symbolSize: 12,
      data: points.filter((p) => p.role === role).map((p) => [p.position, p.objective]) }));
    let best = Infinity;
    c.setOption({
      animation: false,
      tooltip: { formatter: (p) => `point ${p.data[0]}: objective ${fmt.ppl(p.data[1])}` },
      legend: { top: 0 },
      grid: { left: 60, right: 20, top: 40, bottom: 40 },
      xAxis: { type: 'value', name: 'point', nameLocation: 'middle', nameGap: 25 },
      yAxis: { type: 'value', name: 'objective', scale: true },
      series: [
        ...(gradient ? [
          { type: 'line', name: 'tune objective', data: own.map((p) => [p.position, p.tune_objective]) },
          { type: 'line', name: 'objective (report halves)', data: own.map((p) => [p.position, p.objective]) },
        ] : [
          { type: 'scatter', name: 'sample', data: points.filter((p) => p.role === 'sample').map((p) => [p.position, p.objective]) },
          { type: 'scatter', name: 'proposal', symbolSize: 14, data: points.filter((p) => p.role === 'proposal').map((p) => [p.position, p.objective]) },
          { type: 'line', name: 'best so far', step: 'end', showSymbol: false, data: own.map((p) => { best = Math.min(best, p.objective); return [p.position, best]; }) },
        ]),
        ...references,
      ],
    });
    return s;
  }
  const s = await load();
  if (s.state === 'running' || s.state === 'queued') every(2000, () => load().catch(fail));
}

/** A correlation with its 90% interval beneath, or a dash. */
function withInterval(value, interval) {
  if (value === null || value === undefined) return '—';
  if (!interval) return value.toFixed(3);
  return [value.toFixed(3), h('span', { class: 'muted interval' }, ` [${interval[0].toFixed(2)}, ${interval[1].toFixed(2)}]`)];
}

async function validations() {
  const [report, list] = await Promise.all([get('/v1/validations/report'), get('/v1/validations?limit=100')]);
  const proxies = report.proxies;
  // Where mixtures were trained with two seeds, training against itself: the ceiling.
  const ceiling = (s) => (s.ceiling && s.ceiling.n > 0 ? [{ set: s.eval_set, proxy: 'ceiling: two seeds', a: s.ceiling, note: `${s.ceiling.n} mixture(s) trained twice` }] : []);
  // Sets of questions also correlate accuracy; their perplexity is 2^(bits per byte of the gold answers).
  const rows = report.sets.flatMap((s) => [...proxies.map((p) => ({ set: s.eval_set, proxy: p, a: s.proxies[p] || {}, acc: s.accuracy ? s.accuracy[p] : null, note: s.best_proxy === p ? 'the best ρ on this set' : s.note })), ...ceiling(s)]);
  const charts = report.sets.map((s) => ({ s, el: h('div', { class: 'chart', 'data-eval-set': s.eval_set }) }));
  render(h('h1', {}, 'Validations: can the proxy be trusted?'),
    h('p', { class: 'muted' }, 'Each validation trains a model on the union of a mixture\'s partitions (or on their sequences in given proportions); the proxies are scored without training. Correlations are of log perplexity (Pearson r) and of ranks (Spearman ρ), over the unions trained for their summed budget, with bootstrap 90% intervals; ρ again over the mixtures without the eval set\'s own domain (the case of a target the partitions do not cover) and over the best quarter by trained perplexity; the share of pairs of mixtures the proxy orders as training does; and regret, how much worse the trained model of the proxy\'s best mixture is than the best. Mixtures trained with a second seed give the ceiling: how well training ranks them against itself, the most any proxy can reach; their truth is the mean over seeds.'),
    table([
      { title: 'Eval set', cell: (r) => r.set },
      { title: 'Proxy', cell: (r) => (r.a.scale == null ? r.proxy : `${r.proxy} (λ ${r.a.scale})`) },
      { title: 'n', num: true, cell: (r) => r.a.n },
      { title: 'Pearson r', num: true, cell: (r) => withInterval(r.a.pearson_log_ppl, r.a.pearson_log_ppl_90) },
      { title: 'Spearman ρ', num: true, cell: (r) => withInterval(r.a.spearman, r.a.spearman_90) },
      { title: 'ρ without own domain', num: true, cell: (r) => [withInterval(r.a.rho_excluding, r.a.rho_excluding_90), h('span', { class: 'muted' }, ` (n ${r.a.n_excluding ?? 0})`)] },
      { title: 'ρ best quarter', num: true, cell: (r) => withInterval(r.a.rho_top, r.a.rho_top_90) },
      { title: 'Pairs right', num: true, cell: (r) => (r.a.decision_accuracy == null ? '—' : `${(r.a.decision_accuracy * 100).toFixed(0)}%`) },
      { title: 'Regret', num: true, cell: (r) => (r.a.regret == null ? '—' : `${r.a.regret.toFixed(2)}%`) },
      { title: 'Accuracy r / ρ', num: true, cell: (r) => (r.acc ? h('span', { class: 'accuracy-rho' }, `${withInterval(r.acc.pearson)} / ${withInterval(r.acc.spearman)}`) : '—') },
      { title: 'Note', cell: (r) => r.note || '' },
    ], rows, { id: 'correlations' }),
    charts.map(({ s, el }) => [h('h2', {}, `${s.eval_set}: proxy against ${s.accuracy ? 'trained bits per byte of the gold answers' : 'true perplexity'}`), el]),
    h('h2', {}, 'Validations'),
    table([
      { title: 'Validation', cell: (v) => h('code', {}, v.id.slice(0, 8)) },
      { title: 'Mixture', cell: (v) => v.mixture.map((p) => (v.weights ? `${p} ${fmt.weight(v.weights[p])}` : p)).join(' + ') },
      { title: 'Sampling', cell: (v) => (v.sampling === 'weights' ? 'in proportion' : 'union') },
      { title: 'State', cell: (v) => stateTag(v.state) },
      { title: 'Tokens', num: true, cell: (v) => fmt.num(v.tokens) },
      { title: 'Seed', num: true, cell: (v) => v.seed },
      { title: 'Created', cell: (v) => fmt.time(v.created_at) },
    ], list.items, { id: 'validations' }));
  for (const { s, el } of charts) {
    // Questions are drawn in bits per byte of the gold answers, text in perplexity.
    const v = s.accuracy ? (x) => Math.log2(x) : (x) => x;
    const what = s.accuracy ? 'bits per byte (gold)' : 'perplexity';
    const all = s.points.flatMap((p) => [p.true, ...proxies.map((x) => p[x])]).filter((x) => x !== null).map(v);
    const lo = Math.min(...all), hi = Math.max(...all);
    chart(el, {
      tooltip: { formatter: (p) => `${p.data[2]}<br>${p.seriesName} ${fmt.ppl(p.data[0])}, trained ${fmt.ppl(p.data[1])}` },
      legend: { top: 0 },
      grid: { left: 60, right: 20, top: 40, bottom: 45 },
      xAxis: { type: s.accuracy ? 'value' : 'log', name: `proxy ${what}`, nameLocation: 'middle', nameGap: 28, min: lo * 0.98, max: hi * 1.02, axisLabel: { formatter: (x) => x.toFixed(s.accuracy ? 2 : 1) } },
      yAxis: { type: s.accuracy ? 'value' : 'log', name: `trained ${what}`, min: lo * 0.98, max: hi * 1.02, axisLabel: { formatter: (x) => x.toFixed(s.accuracy ? 2 : 1) } },
      series: [
        ...proxies.map((x) => ({ type: 'scatter', name: x, data: s.points.filter((p) => p[x] !== null).map((p) => [v(p[x]), v(p.true), p.mixture.join(' + ')]) })),
        { type: 'line', name: 'y = x', showSymbol: false, lineStyle: { type: 'dashed', color: '#999' }, data: [[lo, lo], [hi, hi]] },
      ],
    });
  }
}

// ---- routing -------------------------------------------------------------------------

const ROUTES = [
  [/^\/$/, overview],
  [/^\/partitions$/, partitions],
  [/^\/partitions\/(.+)$/, partition],
  [/^\/models\/(.+)$/, model],
  [/^\/jobs$/, jobs],
  [/^\/explorer$/, explorer],
  [/^\/leaderboard$/, leaderboard],
  [/^\/heatmap$/, heatmap],
  [/^\/sweeps$/, sweeps],
  [/^\/sweeps\/(.+)$/, sweep],
  [/^\/searches$/, searches],
  [/^\/searches\/(.+)$/, search],
  [/^\/validations$/, validations],
];

function fail(e) {
  document.body.dataset.state = 'error';
  const hint = e.status === 401 || e.status === 403 ? ' — this server needs a token to read: set one (top right).' : '';
  main().replaceChildren(h('p', { class: 'error', id: 'error' }, `${e.message}${hint}`));
}

function start() {
  const input = document.getElementById('token');
  input.value = token();
  document.getElementById('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (input.value.trim()) localStorage.setItem('mixpool_token', input.value.trim());
    else localStorage.removeItem('mixpool_token');
    location.reload();
  });
  for (const a of document.querySelectorAll('nav a')) {
    const path = new URL(a.href).pathname;
    if (path === location.pathname || (path !== '/' && location.pathname.startsWith(`${path}/`))) a.classList.add('here');
  }
  const path = location.pathname.replace(/\/+$/, '') || '/';
  for (const [pattern, page] of ROUTES) {
    const m = path.match(pattern);
    if (m) {
      page(...m.slice(1).map(decodeURIComponent)).then(ready, fail);
      return;
    }
  }
  fail(new Error(`no page ${path}`));
}

document.addEventListener('DOMContentLoaded', start);
