// The stats page: progress, reviewers' throughput, and how often model answers were
// accepted, edited or rejected by confidence bucket and by risk flag.
import { get } from './api.js';
import { h, pct, when } from './dom.js';

function bar(parts) {
  const track = h('span', { class: 'stack' });
  for (const [frac, cls] of parts) {
    const seg = h('span', { class: `seg ${cls}` });
    seg.style.width = `${Math.max(0, Math.min(1, frac || 0)) * 100}%`;
    track.append(seg);
  }
  return track;
}

function card(label, value, note) {
  return h('div', { class: 'card' }, h('div', { class: 'card-value' }, value), h('div', { class: 'card-label' }, label),
    note ? h('div', { class: 'muted' }, note) : null);
}

function rateTable(title, rows, keyLabel) {
  return h('section', { class: 'stats-block' }, h('h2', {}, title),
    h('table', { class: 'rates' },
      h('thead', {}, h('tr', {}, [keyLabel, 'decided', 'accepted', 'edited', 'rejected', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, rows.map((b) => h('tr', { class: b.decided ? '' : 'muted' },
        h('td', {}, b.key), h('td', {}, b.decided), h('td', {}, pct(b.acceptance_rate)), h('td', {}, pct(b.edit_rate)),
        h('td', {}, pct(b.reject_rate)),
        h('td', { class: 'bar-cell' }, bar([[b.acceptance_rate, 'ok'], [b.edit_rate, 'edit'], [b.reject_rate, 'bad']])))))),
    h('p', { class: 'legend' }, h('span', { class: 'dot ok' }), ' accepted ', h('span', { class: 'dot edit' }), ' edited ',
      h('span', { class: 'dot bad' }), ' rejected — rates over items with a model answer that a person decided on'));
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** Error among audited answers at or above each confidence threshold, against the share
 * of answers above it; ε and the certified coverage as dashed lines. */
function riskCoverage(curve, eps, certifiedCoverage) {
  const W = 560, H = 240, L = 44, B = 28, T = 10, R = 10;
  const maxErr = Math.max(eps * 2, ...curve.map((p) => p.error), 0.01);
  const x = (c) => L + c * (W - L - R);
  const y = (e) => T + (1 - e / maxErr) * (H - T - B);
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'route-chart', id: 'risk-coverage', role: 'img',
    'aria-label': 'risk–coverage curve of the audit sample' });
  chart.append(svg('line', { class: 'axis', x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: H - B }));
  for (const c of [0, 0.25, 0.5, 0.75, 1]) {
    chart.append(svg('text', { x: x(c), y: H - B + 14, 'text-anchor': 'middle' }, `${c * 100}%`));
  }
  for (const e of [0, maxErr / 2, maxErr]) {
    chart.append(svg('text', { x: L - 4, y: y(e) + 4, 'text-anchor': 'end' }, `${(e * 100).toFixed(1)}%`));
  }
  chart.append(svg('line', { class: 'eps', x1: L, y1: y(eps), x2: W - R, y2: y(eps) }),
    svg('text', { x: W - R, y: y(eps) - 4, 'text-anchor': 'end' }, `ε = ${eps}`));
  if (certifiedCoverage != null) {
    chart.append(svg('line', { class: 'cut', x1: x(certifiedCoverage), y1: T, x2: x(certifiedCoverage), y2: H - B }));
  }
  if (curve.length) {
    const d = curve.map((p, i) => `${i ? 'L' : 'M'}${x(p.coverage).toFixed(1)},${y(p.error).toFixed(1)}`).join(' ');
    chart.append(svg('path', { class: 'curve', d }));
  }
  chart.append(svg('text', { x: (L + W) / 2, y: H - 2, 'text-anchor': 'middle' }, 'coverage: share of audited answers auto-accepted'));
  return chart;
}

function routingBlock(r) {
  if (!r || !r.samples.length) {
    return h('section', { class: 'stats-block', id: 'routing' }, h('h2', {}, 'Routing'),
      h('p', { class: 'muted' }, 'No audit sample yet. `mmloop audit-sample DIR --size 1000` draws one; reviewers get its items '
        + 'first, and `mmloop route DIR` then auto-accepts the model answers it certifies.'));
  }
  const plan = r.plan;
  const groups = plan ? plan.groups : [];
  const certified = groups.filter((g) => g.threshold != null);
  const main = certified.length === 1 ? certified[0] : null;
  return h('section', { class: 'stats-block', id: 'routing' }, h('h2', {}, 'Routing'),
    h('div', { class: 'cards' },
      card('audited', r.samples.filter((s) => s.kind === 'calibration').reduce((a, s) => a + s.decided, 0).toLocaleString(),
        `of ${r.samples.filter((s) => s.kind === 'calibration').reduce((a, s) => a + s.size, 0).toLocaleString()} drawn`),
      card('certified threshold', main ? main.threshold.toFixed(3) : certified.length ? `${certified.length} groups` : 'none',
        `error ≤ ${r.epsilon} with probability ≥ ${1 - r.delta}`),
      card('review saved', plan ? pct(plan.review_saved) : '–',
        plan ? `${plan.accepted.toLocaleString()} of ${plan.pool.toLocaleString()} pending answers` : 'no decisions yet')),
    riskCoverage(r.curve, r.epsilon, main ? main.confidence.coverage : null),
    h('p', { class: 'legend' }, 'Risk–coverage of the audit sample: the error among answers at or above a confidence threshold, '
      + 'against the share of answers above it. Dashed: ε and the certified coverage.'),
    groups.length ? h('table', { class: 'rates', id: 'route-groups' },
      h('thead', {}, h('tr', {}, ['group', 'audited', 'open', 'threshold', 'n ≥ threshold', 'wrong', 'p-value', 'pending', 'would accept']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, groups.map((g) => h('tr', {},
        h('td', {}, g.group), h('td', {}, g.audited), h('td', {}, g.open),
        h('td', {}, g.threshold != null ? g.threshold.toFixed(3) : 'none'), h('td', {}, g.confidence.n),
        h('td', {}, g.confidence.errors), h('td', {}, g.confidence.p_value != null ? g.confidence.p_value.toFixed(3) : '–'),
        h('td', {}, g.pool.toLocaleString()), h('td', {}, g.accept.toLocaleString()))))) : null,
    r.drift.length ? h('table', { class: 'rates', id: 'drift' },
      h('thead', {}, h('tr', {}, ['route run', 'auto-accepted', 'audited', 'wrong', 'error', '95% interval', 'ε', '']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, r.drift.map((d) => h('tr', { class: d.warn ? 'warn-row' : '' },
        h('td', {}, d.run), h('td', {}, d.auto_accepted.toLocaleString()), h('td', {}, d.audited), h('td', {}, d.wrong),
        h('td', {}, d.error != null ? `${(d.error * 100).toFixed(1)}%` : '–'),
        h('td', {}, d.interval ? `${(d.interval[0] * 100).toFixed(1)}–${(d.interval[1] * 100).toFixed(1)}%` : '–'),
        h('td', {}, d.epsilon),
        h('td', {}, d.warn ? h('span', { class: 'warn' }, 'error above ε: undo the run or re-audit') : ''))))) : null);
}

function trainingBlock(runs) {
  return h('section', { class: 'stats-block', id: 'training' }, h('h2', {}, 'Training runs'),
    runs && runs.length ? h('table', { class: 'rates', id: 'training-runs' },
      h('thead', {}, h('tr', {}, ['run', 'status', 'model', 'data', 'steps', 'loss', 'validation loss', 'adapter', 'started']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, runs.map((r) => h('tr', {},
        h('td', {}, r.engine === 'swift' ? `${r.run} (ms-swift)` : r.run), h('td', {}, r.status),
        h('td', {}, r.model ?? '–'),
        h('td', {}, `${r.version ?? '–'}${r.split ? ` · ${r.split}` : ''}${r.examples != null ? ` · ${r.examples} examples` : ''}`),
        h('td', {}, r.global_step != null ? `${r.global_step} / ${r.max_steps ?? '?'}` : '–'),
        h('td', {}, r.loss != null ? r.loss.toFixed(4) : '–'),
        h('td', {}, r.eval_loss != null ? r.eval_loss.toFixed(4) : '–'),
        h('td', {}, r.checkpoint ?? '–'), h('td', {}, when(r.started_at))))))
      : h('p', { class: 'muted' }, 'No training run yet. `mmloop sft DIR --model M --version v3 --output_dir OUT` fine-tunes '
        + 'the model on a version\'s trusted labels and records the run here.'));
}

export async function mount(root) {
  const { project, stats: s, routing, training } = await get('/api/stats');
  const done = s.items - s.to_review;
  const progress = s.items ? done / s.items : 0;
  root.replaceChildren(h('section', { class: 'stats' },
    h('h1', {}, `Stats · ${project}`),
    h('div', { class: 'cards' },
      card('items', s.items.toLocaleString()),
      card('decided', done.toLocaleString(), pct(progress)),
      card('to review', s.to_review.toLocaleString()),
      card('with a model answer', s.with_candidates.toLocaleString()),
      card('leased now', s.leased.toLocaleString())),
    h('div', { class: 'progress' }, bar([[progress, 'ok']])),
    h('section', { class: 'stats-block' }, h('h2', {}, 'By status'),
      h('table', { class: 'rates' }, h('tbody', {}, Object.entries(s.by_status).map(([k, v]) => h('tr', {},
        h('td', {}, h('span', { class: `chip status-${k}` }, k)), h('td', {}, v.toLocaleString()),
        h('td', { class: 'bar-cell' }, bar([[s.items ? v / s.items : 0, 'ok']]))))))),
    h('section', { class: 'stats-block' }, h('h2', {}, 'Reviewers'),
      s.reviewers.length ? h('table', { class: 'rates', id: 'reviewers' },
        h('thead', {}, h('tr', {}, ['who', 'decisions', 'accepted', 'edited', 'rejected', 'skipped', 'undone',
          'items / hour', 'last hour', 'mean time', 'last active'].map((t) => h('th', {}, t)))),
        h('tbody', {}, s.reviewers.map((r) => h('tr', {},
          h('td', {}, r.actor), h('td', {}, r.decisions), h('td', {}, r.accepted), h('td', {}, r.edited),
          h('td', {}, r.rejected), h('td', {}, r.skipped), h('td', {}, r.undone),
          h('td', {}, r.items_per_hour != null ? r.items_per_hour.toFixed(0) : '–'), h('td', {}, r.last_hour),
          h('td', {}, r.mean_lead_time_ms != null ? `${(r.mean_lead_time_ms / 1000).toFixed(1)} s` : '–'),
          h('td', {}, when(r.last_at)))))) : h('p', { class: 'muted' }, 'No decisions yet.'),
      h('p', { class: 'legend' }, 'items / hour counts time spent deciding (the sum of time to decision), not breaks.')),
    rateTable('By confidence of the model answer', s.by_confidence, 'confidence'),
    rateTable('By risk flag', s.by_flag, 'flag'),
    routingBlock(routing),
    trainingBlock(training)));
}
