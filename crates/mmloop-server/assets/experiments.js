// The experiments page: each online A/B experiment of `mmloop serve` as `mmloop ab status`
// reads it — the arms, each arm against the control with its always-valid confidence
// sequence, the sample-ratio check and the recommendation — with the server's two plots
// shown as SVG images.
import { get } from './api.js';
import { h, pct } from './dom.js';

const num = (v, d) => (v == null || !isFinite(v) ? '–' : v.toFixed(d));

function plot(svgText, label) {
  return h('img', { class: 'ab-plot', alt: label, src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svgText)}` });
}

function experiment({ status: s, plots }) {
  return h('section', { class: 'stats-block experiment', id: `experiment-${s.experiment.name}` },
    h('h2', {}, s.experiment.name),
    h('p', { class: 'muted' }, `α = ${s.alpha} (${num(s.level_per_comparison, 4)} per comparison), τ = ${s.tau}; the unit is the ${s.unit}`),
    h('table', { class: 'rates ab-arms' },
      h('thead', {}, h('tr', {}, ['arm', 'model', 'share', 'users', 'requests', 'with outcome', 'success', 'latency', 'confidence']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, s.arms.map((a, i) => h('tr', {},
        h('td', {}, a.arm), h('td', {}, a.model), h('td', {}, pct(s.experiment.weights[i])),
        h('td', {}, a.units.toLocaleString()), h('td', {}, a.exposures.toLocaleString()), h('td', {}, a.outcomes.toLocaleString()),
        h('td', {}, a.units_with_outcome ? num(a.unit_sum / a.units_with_outcome, 3) : '–'),
        h('td', {}, a.mean_latency_ms != null ? `${a.mean_latency_ms.toFixed(0)} ms` : '–'),
        h('td', {}, num(a.mean_confidence, 3)))))),
    h('p', { class: s.srm_mismatch ? 'warn' : 'muted' },
      `Sample ratio check (χ² of users per arm against the split): p = ${num(s.srm_p_value, 4)}${s.srm_mismatch ? ' — MISMATCH' : ''}`),
    h('table', { class: 'rates ab-comparisons' },
      h('thead', {}, h('tr', {}, ['comparison', 'difference', 'confidence sequence', 'always-valid p', 'recommendation']
        .map((t) => h('th', {}, t)))),
      h('tbody', {}, s.comparisons.map((c) => {
        const q = c.sequential;
        const cls = c.recommendation.includes('better') ? 'good' : c.recommendation.startsWith('stop') ? 'warn' : '';
        return h('tr', {}, h('td', {}, `${c.arm} − ${c.against}`), h('td', {}, num(q && q.difference, 4)),
          h('td', {}, q ? `[${num(q.low, 4)}, ${num(q.high, 4)}]` : '–'), h('td', {}, num(q && q.p_value, 4)),
          h('td', { class: `verdict ${cls}` }, c.recommendation));
      }))),
    h('div', { class: 'ab-plots' }, plot(plots.rates, 'success rate by arm as users came in'),
      plot(plots.difference, 'difference from the control with its always-valid confidence sequence')),
    h('p', { class: 'legend' }, 'Users in the order of their first outcome, each with their mean outcome now. The band is the '
      + 'always-valid confidence sequence at each point: the experiment may be read, and stopped, at any time.'));
}

export async function mount(root) {
  const { experiments } = await get('/api/experiments');
  if (!experiments.length) {
    root.replaceChildren(h('section', { class: 'stats' }, h('h1', {}, 'Experiments'),
      h('p', { class: 'muted' }, 'No experiment yet. `mmloop serve --project DIR --experiment NAME --arm a=... --arm b=...` '
        + 'starts one; its exposures and outcomes show here.')));
    return;
  }
  const all = await Promise.all(experiments.map((name) => get(`/api/experiments/${encodeURIComponent(name)}`)));
  root.replaceChildren(h('section', { class: 'stats' }, h('h1', {}, 'Experiments'), all.map(experiment)));
}
