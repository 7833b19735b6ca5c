// The review view: the riskiest item first, decided with the keyboard.
// Enter/A accept · E edit (Enter saves) · R reject · S skip · U undo · ←/→ · ? help.
import { get, post, query } from './api.js';
import { h, $, fill, toast, when } from './dom.js';
import { viewer } from './viewer.js';

// Words a hedging rule flags, for flags that carry no span.
const HEDGES = ['not sure', 'i think', 'looks like', 'maybe', 'probably', 'possibly', 'perhaps', 'likely',
  'might', 'may', 'could', 'seems', 'appears', 'unclear', 'uncertain'];
const FILTERS = ['status', 'flag', 'min_conf', 'max_conf', 'split', 'tag', 'model', 'task'];

const st = {
  me: null, root: null, item: null, shownAt: 0, trail: [], pos: -1, decided: [],
  editing: false, busy: false, filters: {}, view: null, rendered: false,
};

export async function mount(root, me) {
  st.me = me;
  st.root = root;
  const params = new URLSearchParams(location.search);
  for (const k of FILTERS) if (params.get(k)) st.filters[k] = params.get(k);
  root.replaceChildren(h('section', { class: 'review' },
    filterBar(),
    h('div', { class: 'work' },
      h('div', { class: 'pane image-pane', id: 'image-pane' }),
      h('div', { class: 'pane info-pane', id: 'info-pane' }, h('p', { class: 'muted' }, 'Loading…')))));
  document.addEventListener('keydown', onKey);
  setInterval(renewLease, Math.max(10, me.lease_seconds / 3) * 1000);
  loadFacets();
  await run(forward);
}

// ---- the queue filters ------------------------------------------------------------

function select(name, label, options) {
  const s = h('select', { name, id: `f-${name}`, 'aria-label': label },
    h('option', { value: '' }, name === 'status' ? 'to review' : `any ${label.toLowerCase()}`),
    options.map((o) => h('option', { value: o }, o)));
  s.value = st.filters[name] || '';
  if (st.filters[name] && !options.includes(st.filters[name])) s.append(h('option', { value: st.filters[name] }, st.filters[name]));
  s.value = st.filters[name] || '';
  return s;
}

function filterBar() {
  const num = (name, label) => h('input', { name, id: `f-${name}`, type: 'number', min: 0, max: 1, step: 0.05,
    placeholder: label, 'aria-label': label, value: st.filters[name] || '', class: 'conf-input' });
  const form = h('form', { class: 'filters', id: 'filters', onchange: applyFilters, onsubmit: (e) => { e.preventDefault(); applyFilters(); } },
    h('span', { class: 'filters-title', title: 'F focuses the filters' }, 'Queue'),
    select('status', 'Status', ['pending', 'imported', 'skipped', 'rejected', 'edited', 'accepted']),
    select('flag', 'Flag', []),
    h('span', { class: 'conf-range' }, 'confidence ', num('min_conf', 'min'), '–', num('max_conf', 'max')),
    select('split', 'Split', []), select('tag', 'Tag', []), select('model', 'Model', []),
    select('task', 'Task', ['vqa', 'caption']));
  return form;
}

async function loadFacets() {
  try {
    const f = await get('/api/facets');
    for (const [name, values] of [['flag', f.flags], ['split', f.splits], ['tag', f.tags], ['model', f.models]]) {
      const old = $(`#f-${name}`);
      if (old) old.replaceWith(select(name, name[0].toUpperCase() + name.slice(1), values));
    }
  } catch (e) { /* the filters still work as typed */ }
}

function applyFilters() {
  const form = $('#filters');
  st.filters = {};
  for (const k of FILTERS) {
    const v = form.elements[k] && form.elements[k].value.trim();
    if (v) st.filters[k] = v;
  }
  history.replaceState(null, '', `/${query(st.filters)}`);
  st.trail = st.trail.slice(0, st.pos + (st.item ? 0 : 1));
  st.pos = st.trail.length - 1;
  run(forward);
}

// ---- moving through items ---------------------------------------------------------

async function run(f) {
  if (st.busy) return;
  st.busy = true;
  try { await f(); } catch (e) { failed(e); } finally { st.busy = false; }
}

async function forward() {
  if (st.pos < st.trail.length - 1) {
    st.pos += 1;
    return show(await get(`/api/items/${st.trail[st.pos]}`));
  }
  let r;
  if (st.me.can.label) {
    r = await post(`/api/items/next${query(st.filters)}`);
  } else {
    const after = st.trail.length ? st.trail[st.trail.length - 1] : 0;
    const list = await get(`/api/items${query({ ...st.filters, after, limit: 1 })}`);
    r = list.items.length ? await get(`/api/items/${list.items[0].id}`) : null;
  }
  if (!r) return showEmpty();
  if (st.trail[st.trail.length - 1] !== r.item.id) st.trail.push(r.item.id);
  st.pos = st.trail.length - 1;
  show(r);
}

async function back() {
  if (st.pos <= 0) return toast('this is the first item of the session');
  st.pos -= 1;
  show(await get(`/api/items/${st.trail[st.pos]}`));
}

async function reload() {
  if (st.item) show(await get(`/api/items/${st.item.item.id}`));
}

function primaryOf(r) {
  return r.candidates.find((c) => !c.error && c.answer != null) || null;
}

// `<image>` placeholders tell a model where an image goes; people see the image itself.
function withoutImageTags(text) {
  return text.replace(/<image>\s*/g, '').trim();
}

function show(r) {
  st.item = r;
  st.editing = false;
  st.shownAt = performance.now();
  const { item } = r;
  const primary = primaryOf(r);
  st.view = viewer(item.images);
  $('#image-pane').replaceChildren(st.view.el);
  fill($('#info-pane'),
    r.audit ? h('p', { class: 'audit-banner', id: 'audit-banner' },
      h('b', {}, r.audit.kind === 'drift' ? 'Drift audit' : 'Audit sample'),
      ` #${r.audit.sample}: an item drawn at random to measure how often the model is right. The model's confidence is `
      + 'hidden; decide as usual (a skip counts as a wrong answer).') : null,
    metaLine(r),
    item.context.length ? h('details', { class: 'context' }, h('summary', {}, `Earlier turns (${item.context.length})`),
      item.context.map((m) => h('p', { class: 'turn' }, h('b', {}, `${m.role}: `), withoutImageTags(m.content)))) : null,
    h('div', { class: 'label-caption' }, item.task === 'caption' ? 'Prompt' : 'Question'),
    h('h2', { class: 'question', id: 'question' }, withoutImageTags(item.question)),
    candidateBlock(primary, r.candidates, !!r.audit),
    h('div', { id: 'label-block', class: 'label-block' }, labelView(item)),
    actionBar(r),
    h('details', { class: 'history', id: 'history', open: true }, h('summary', {}, 'History'),
      h('div', { id: 'history-body', class: 'muted' }, 'loading…')));
  st.root.dataset.itemId = item.id;
  st.root.dataset.status = item.label ? item.label.status : 'pending';
  delete st.root.dataset.empty;
  if (!st.rendered) {
    st.rendered = true;
    performance.mark('mmloop:first-item');
  }
  loadHistory(item.id);
}

function showEmpty() {
  st.item = null;
  $('#image-pane').replaceChildren(h('div', { class: 'empty-image' }));
  fill($('#info-pane'), h('div', { class: 'empty' },
    h('h2', {}, 'Nothing left to review here'),
    h('p', {}, Object.keys(st.filters).length
      ? 'No item needs review under these filters: change or clear them above.'
      : 'Every item has been decided. The Stats page shows how it went.'),
    st.trail.length ? h('p', { class: 'muted' }, '← goes back through this session’s items.') : null));
  st.root.dataset.empty = '1';
  delete st.root.dataset.itemId;
  if (!st.rendered) { st.rendered = true; performance.mark('mmloop:first-item'); }
}

// ---- what an item shows -----------------------------------------------------------

function metaLine(r) {
  const { item, lease } = r;
  const status = item.label ? item.label.status : 'pending';
  let leaseText = null;
  if (lease) {
    const mine = lease.user === st.me.user.name;
    const mins = Math.max(0, Math.round((lease.until_ms - Date.now()) / 60000));
    leaseText = h('span', { class: `chip ${mine ? 'lease-mine' : 'lease-other'}`, id: 'lease' },
      mine ? `yours for ${mins} min` : `held by ${lease.user}`);
  }
  return h('div', { class: 'meta' },
    h('span', { class: 'item-id' }, `#${item.id}`),
    item.source_id ? h('span', { class: 'muted', title: 'id in the source file' }, item.source_id) : null,
    h('span', { class: `chip task-${item.task}` }, item.task),
    h('span', { class: `chip status-${status}`, id: 'status' }, status),
    item.split ? h('span', { class: 'chip' }, item.split) : null,
    item.tags.map((t) => h('span', { class: 'chip tag' }, t)),
    leaseText,
    h('span', { class: 'muted pos' }, `${st.pos + 1} / ${st.trail.length} this session`));
}

function findWord(lower, w) {
  for (let from = 0; ;) {
    const i = lower.indexOf(w, from);
    if (i < 0) return -1;
    const okBefore = i === 0 || !/[\p{L}\p{N}]/u.test(lower[i - 1]);
    const okAfter = i + w.length >= lower.length || !/[\p{L}\p{N}]/u.test(lower[i + w.length]);
    if (okBefore && okAfter) return i;
    from = i + 1;
  }
}

function wordsFor(f) {
  const words = [];
  const quoted = /["“'‘«]([^"”'’»]{1,40})["”'’»]/u.exec(f.why || '');
  if (quoted) words.push(quoted[1].toLowerCase());
  if (/hedg|uncertain|unsure/i.test(f.flag)) words.push(...HEDGES);
  return words;
}

/** The answer as text nodes, with the stretches risk flags point at marked. */
export function highlight(text, flags) {
  const cps = Array.from(text);
  const units = (cp) => cps.slice(0, cp).join('').length;
  const lower = text.toLowerCase();
  const marks = [];
  for (const f of flags) {
    if (Array.isArray(f.span) && f.span[0] < f.span[1] && f.span[1] <= cps.length) {
      marks.push([units(f.span[0]), units(f.span[1]), f]);
      continue;
    }
    if (lower.length !== text.length) continue;
    for (const w of wordsFor(f)) {
      const i = findWord(lower, w);
      if (i >= 0) { marks.push([i, i + w.length, f]); break; }
    }
  }
  marks.sort((a, b) => a[0] - b[0]);
  const out = [];
  let at = 0;
  for (const [s, e, f] of marks) {
    if (s < at) continue;
    if (s > at) out.push(text.slice(at, s));
    out.push(h('mark', { class: 'flagged', title: f.why ? `${f.flag}: ${f.why}` : f.flag, dataset: { flag: f.flag } },
      text.slice(s, e)));
    at = e;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

function confidence(c) {
  if (c == null) return h('span', { class: 'conf unknown' }, 'confidence unknown');
  const level = c < 0.5 ? 'low' : c < 0.8 ? 'mid' : 'high';
  const fill = h('span', { class: 'conf-fill' });
  fill.style.width = `${Math.max(0, Math.min(1, c)) * 100}%`;
  return h('span', { class: `conf ${level}`, title: `confidence ${c}` },
    h('span', { class: 'conf-track' }, fill), h('span', { class: 'conf-num', id: 'confidence' }, c.toFixed(2)));
}

function candidateBlock(primary, all, audit) {
  if (!primary) {
    const failed = all.find((c) => c.error);
    return h('div', { class: 'candidate none', id: 'candidate' },
      failed ? h('p', {}, h('b', {}, `${failed.model} failed: `), failed.error)
        : h('p', { class: 'muted' }, 'No model answer: accept the current answer, or press E to write one.'));
  }
  const others = all.filter((c) => c !== primary);
  return h('div', { class: `candidate${primary.flags.length ? ' risky' : ''}`, id: 'candidate' },
    h('div', { class: 'candidate-head' }, h('span', { class: 'model' }, primary.model),
      audit ? h('span', { class: 'conf unknown' }, 'confidence hidden (audit)') : confidence(primary.confidence)),
    h('p', { class: 'candidate-answer', id: 'candidate-answer' }, highlight(primary.answer, primary.flags)),
    primary.flags.length ? h('ul', { class: 'flags', id: 'flags' },
      primary.flags.map((f) => h('li', {}, h('span', { class: 'flag-name' }, f.flag), f.why ? ` ${f.why}` : ''))) : null,
    others.length ? h('details', { class: 'others' }, h('summary', {}, `Other model answers (${others.length})`),
      others.map((c) => h('p', {}, h('b', {}, `${c.model} `), c.error ? `failed: ${c.error}` : c.answer,
        c.confidence != null ? h('span', { class: 'muted' }, ` (${c.confidence.toFixed(2)})`) : ''))) : null);
}

function labelView(item) {
  const l = item.label;
  const head = h('div', { class: 'label-caption' }, l ? `Current answer · ${l.status} by ${l.actor}` : 'Current answer');
  if (!l || (l.answer.text == null && !(l.answer.all || []).length)) {
    return [head, h('p', { class: 'answer muted', id: 'answer' }, 'none yet')];
  }
  return [head,
    l.answer.text != null ? h('p', { class: 'answer', id: 'answer' }, l.answer.text) : null,
    (l.answer.all || []).length ? h('ol', { class: 'all-answers', id: 'all-answers' },
      l.answer.all.map((a) => h('li', {}, a.answer, a.confidence ? h('span', { class: 'muted' }, ` (${a.confidence})`) : ''))) : null];
}

function actionBar(r) {
  const can = st.me.can;
  const b = (key, label, f, cls = '', enabled = true) => h('button', {
    type: 'button', class: `action ${cls}`, disabled: !enabled, tabindex: '-1',
    onclick: (e) => { e.currentTarget.blur(); f(); },
  }, h('kbd', {}, key), ` ${label}`);
  return h('div', { class: 'actions', id: 'actions' },
    b('A', 'Accept', () => decide('accept'), 'primary', can.label),
    b('E', 'Edit', startEdit, '', can.label),
    b('R', 'Reject', () => decide('reject'), 'danger', can.review),
    b('S', 'Skip', () => decide('skip'), '', can.label),
    b('U', 'Undo', undo, '', can.label),
    b('←', 'Prev', () => run(back)),
    b('→', 'Next', () => run(forward)),
    r.lease && r.lease.user !== st.me.user.name ? h('span', { class: 'warn' }, `${r.lease.user} is working on this item`) : null);
}

async function loadHistory(id) {
  let data;
  try { data = await get(`/api/items/${id}/history`); } catch (e) { return; }
  const body = $('#history-body');
  if (!body || !st.item || st.item.item.id !== id) return;
  body.classList.remove('muted');
  if (!data.labels.length) { body.replaceChildren(h('p', { class: 'muted' }, 'No label yet.')); return; }
  body.replaceChildren(h('table', { class: 'history-table' },
    h('thead', {}, h('tr', {}, ['when', 'who', 'action', 'status', 'answer', 'time'].map((t) => h('th', {}, t)))),
    h('tbody', {}, data.labels.map((l) => h('tr', {},
      h('td', { title: l.at }, when(l.at)), h('td', {}, l.actor), h('td', {}, l.action),
      h('td', {}, h('span', { class: `chip status-${l.status}` }, l.status)),
      h('td', { class: 'history-answer' }, l.answer.text ?? (l.answer.all || []).map((a) => a.answer).join(' · ')),
      h('td', {}, l.lead_time_ms != null ? `${(l.lead_time_ms / 1000).toFixed(1)} s` : ''))))));
}

// ---- deciding ---------------------------------------------------------------------

function failed(e) {
  if (e.status === 409 && e.body.error === 'conflict') {
    toast('Someone changed this item meanwhile: nothing was saved. Here is the current answer.', 'error');
    reload().catch(() => {});
  } else {
    toast(e.message, 'error');
  }
}

async function decide(action, extra = {}) {
  const r = st.item;
  if (!r) return;
  if (!st.me.can.label) { toast('viewers cannot label items', 'error'); return; }
  await run(async () => {
    const primary = primaryOf(r);
    const body = { action, base: r.item.label ? r.item.label.id : null,
      lead_time_ms: Math.round(performance.now() - st.shownAt), ...extra };
    if ((action === 'accept' || action === 'reject') && primary) body.candidate_id = primary.id;
    const out = await post(`/api/items/${r.item.id}/decision`, body);
    st.decided.push({ id: r.item.id, label: out.label.id });
    st.editing = false;
    toast(`${out.label.status} · item ${r.item.id}`);
    await forward();
  });
}

function startEdit() {
  const r = st.item;
  if (!r || !st.me.can.label || st.editing) return;
  const primary = primaryOf(r);
  const cur = (r.item.label && r.item.label.answer) || { text: null, all: [] };
  const caption = r.item.task === 'caption';
  const input = caption ? h('textarea', { class: 'answer-input', id: 'edit-text', rows: 4 })
    : h('input', { class: 'answer-input', id: 'edit-text', autocomplete: 'off' });
  input.value = (primary && primary.answer) ?? cur.text ?? ((cur.all || [])[0] || {}).answer ?? '';
  const alls = (cur.all || []).map((a, i) => {
    const el = h('input', { class: 'all-input', 'aria-label': `answer ${i + 1}`, autocomplete: 'off' });
    el.value = a.answer;
    if (a.confidence) el.dataset.confidence = a.confidence;
    return el;
  });
  $('#label-block').replaceChildren(h('div', { class: 'editor', id: 'editor' },
    h('label', { class: 'label-caption', for: 'edit-text' }, caption ? 'Caption' : 'Answer'), input,
    alls.length ? h('div', { class: 'all-edit' }, h('div', { class: 'label-caption' }, `All ${alls.length} answers`), alls) : null,
    h('p', { class: 'hint' }, `Enter saves · Esc cancels${caption ? ' · Shift+Enter: new line' : ''}`)));
  st.editing = true;
  input.focus();
  input.select();
}

function cancelEdit() {
  st.editing = false;
  if (st.item) fill($('#label-block'), labelView(st.item.item));
}

function saveEdit() {
  const text = $('#edit-text').value;
  const all = [...document.querySelectorAll('.all-input')]
    .map((el) => (el.dataset.confidence ? { answer: el.value, confidence: el.dataset.confidence } : { answer: el.value }))
    .filter((a) => a.answer.trim() !== '');
  decide('edit', { answer: { text: text.trim() === '' ? null : text, all } });
}

async function undo() {
  await run(async () => {
    const r = st.item;
    const here = r && r.item.label && st.decided.find((d) => d.id === r.item.id && d.label === r.item.label.id);
    const target = here || st.decided[st.decided.length - 1];
    if (!target) { toast('nothing to undo in this session'); return; }
    await post(`/api/items/${target.id}/undo`, { base: target.label });
    st.decided = st.decided.filter((d) => d !== target);
    const i = st.trail.lastIndexOf(target.id);
    if (i >= 0) st.pos = i;
    else { st.trail.splice(st.pos + 1, 0, target.id); st.pos += 1; }
    show(await get(`/api/items/${target.id}`));
    toast(`undone · item ${target.id}`);
  });
}

async function renewLease() {
  const r = st.item;
  if (!r || document.hidden || !r.lease || r.lease.user !== st.me.user.name) return;
  try {
    const out = await post(`/api/items/${r.item.id}/lease`);
    if (st.item === r) r.lease = out.lease;
  } catch (e) { toast(e.message, 'error'); }
}

function onKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
  const field = e.target.closest && e.target.closest('input, textarea, select');
  if (st.editing && field && field.closest('#editor')) {
    if (e.key === 'Enter' && !(e.shiftKey && field.tagName === 'TEXTAREA')) { e.preventDefault(); saveEdit(); }
    else if (e.key === 'Escape') { e.preventDefault(); cancelEdit(); }
    return;
  }
  if (field) {
    if (e.key === 'Escape') field.blur();
    return;
  }
  const keys = {
    Enter: () => decide('accept'), a: () => decide('accept'), e: startEdit, r: () => decide('reject'),
    s: () => decide('skip'), u: undo, ArrowLeft: () => run(back), ArrowRight: () => run(forward),
    '+': () => st.view && st.view.zoomIn(), '=': () => st.view && st.view.zoomIn(),
    '-': () => st.view && st.view.zoomOut(), 0: () => st.view && st.view.reset(),
    f: () => { const s = $('#f-status'); if (s) s.focus(); },
  };
  const f = keys[e.key.length === 1 ? e.key.toLowerCase() : e.key];
  if (f) { e.preventDefault(); f(); }
}

