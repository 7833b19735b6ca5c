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

export async function mount(root) {
  const { project, stats: s } = await get('/api/stats');
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
    rateTable('By risk flag', s.by_flag, 'flag')));
}
