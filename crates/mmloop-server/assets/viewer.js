// The image viewer: fit to the pane, zoom with the wheel (around the pointer) or + / - / 0,
// pan by dragging, double-click to reset. Several images of one item get thumbnails.
import { h } from './dom.js';

export function viewer(images) {
  let scale = 1, x = 0, y = 0, drag = null, current = 0;
  const img = h('img', { class: 'zoomable', alt: '', draggable: 'false' });
  const stage = h('div', { class: 'stage' }, img);
  const zoomLabel = h('span', { class: 'zoom-label' }, '100%');
  const apply = () => {
    img.style.transform = `translate(${x}px, ${y}px) scale(${scale})`;
    zoomLabel.textContent = `${Math.round(scale * 100)}%`;
  };
  const zoomAt = (factor, cx, cy) => {
    const next = Math.min(20, Math.max(1, scale * factor));
    const r = stage.getBoundingClientRect();
    const px = (cx ?? r.left + r.width / 2) - r.left - r.width / 2;
    const py = (cy ?? r.top + r.height / 2) - r.top - r.height / 2;
    x = px - (px - x) * (next / scale);
    y = py - (py - y) * (next / scale);
    scale = next;
    if (scale === 1) { x = 0; y = 0; }
    apply();
  };
  const reset = () => { scale = 1; x = 0; y = 0; apply(); };
  stage.addEventListener('wheel', (e) => { e.preventDefault(); zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX, e.clientY); }, { passive: false });
  stage.addEventListener('pointerdown', (e) => { drag = { sx: e.clientX - x, sy: e.clientY - y }; stage.setPointerCapture(e.pointerId); stage.classList.add('dragging'); });
  stage.addEventListener('pointermove', (e) => { if (drag && scale > 1) { x = e.clientX - drag.sx; y = e.clientY - drag.sy; apply(); } });
  const end = () => { drag = null; stage.classList.remove('dragging'); };
  stage.addEventListener('pointerup', end);
  stage.addEventListener('pointercancel', end);
  stage.addEventListener('dblclick', reset);

  const show = (i) => {
    current = i;
    const im = images[i];
    img.src = im.url;
    img.alt = `image ${i + 1} of ${images.length} (${im.width}×${im.height})`;
    if (im.width * im.height < 4096) img.classList.add('pixelated'); else img.classList.remove('pixelated');
    reset();
    for (const [j, t] of thumbs.entries()) t.classList.toggle('active', j === i);
  };
  const thumbs = images.length > 1
    ? images.map((im, i) => h('button', { type: 'button', class: 'thumb', onclick: () => show(i), title: `image ${i + 1}` },
      h('img', { src: im.url, alt: '' })))
    : [];
  const info = h('div', { class: 'viewer-info' }, zoomLabel,
    images.length ? h('span', {}, ` · ${images[0].width}×${images[0].height} ${images[0].format}`) : 'no image');
  const el = h('div', { class: 'viewer' }, stage, thumbs.length ? h('div', { class: 'thumbs' }, thumbs) : null, info);
  if (images.length) show(0);
  return { el, zoomIn: () => zoomAt(1.25), zoomOut: () => zoomAt(1 / 1.25), reset, get current() { return current; } };
}
