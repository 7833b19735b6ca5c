// Building the page. Text from users and models always goes in as text nodes
// (textContent), never as HTML: no function here parses markup.

/** h('div', {class: 'x', onclick: f}, 'text', child, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  add(el, children);
  return el;
}

export function add(el, children) {
  for (const c of [children].flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces an element's children (nulls and nested arrays allowed). */
export function fill(el, ...children) {
  el.replaceChildren();
  return add(el, children);
}

export const $ = (sel, root = document) => root.querySelector(sel);

let toastTimer = 0;
/** A short message at the bottom of the page. */
export function toast(msg, kind = 'info') {
  const t = $('#toast');
  if (!t) return;
  t.className = `toast ${kind}`;
  t.textContent = msg;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.hidden = true; }, kind === 'error' ? 6000 : 2500);
}

export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toLocaleString();
}

export function pct(x) {
  return x == null ? '–' : `${(x * 100).toFixed(0)}%`;
}
