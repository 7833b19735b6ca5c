// End-to-end test of the review UI in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core; no browser is downloaded). Run by the Rust test
// crates/mmloop-cli/tests/review_e2e.rs, which makes the project, starts `mmloop review`,
// and checks the database and the audit log afterwards.
//
//   MMLOOP_URL=http://127.0.0.1:8080/ MMLOOP_USER=rita MMLOOP_PASSWORD=... node review.spec.mjs
//
// It logs in and reviews ten items with the keyboard only (accept, edit one, reject, skip,
// undo one), checks that model and user text is shown escaped, measures first render and
// page weight, takes screenshots, and writes what it did to output/result.json.
import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

const here = dirname(fileURLToPath(import.meta.url));
const out = process.env.E2E_OUT || join(here, 'output');
const base = (process.env.MMLOOP_URL || 'http://127.0.0.1:8080/').replace(/\/$/, '');
const user = process.env.MMLOOP_USER || 'admin';
const password = process.env.MMLOOP_PASSWORD;
assert.ok(password, 'set MMLOOP_PASSWORD');
mkdirSync(out, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const problems = [];
const result = { decisions: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error' && !/status of 40[49]/.test(m.text())) problems.push(`console: ${m.text()}`); });
  page.on('dialog', (d) => { problems.push(`dialog opened: ${d.message()}`); d.dismiss(); });

  // Not logged in: the review page sends us to the login page.
  await page.goto(`${base}/`);
  assert.match(page.url(), /\/login$/, 'without a session / redirects to /login');

  // Log in with the keyboard (the user name field has focus).
  await page.waitForSelector('#username:focus');
  await page.keyboard.type(user);
  await page.keyboard.press('Tab');
  await page.keyboard.type(password);
  const weight = { bytes: 0, files: {} };
  const count = async (resp) => {
    try {
      const b = await resp.body();
      const path = new URL(resp.url()).pathname;
      weight.bytes += b.length;
      weight.files[path] = b.length;
    } catch { /* redirects have no body */ }
  };
  page.on('response', count);
  await page.keyboard.press('Enter');
  await page.waitForURL(`${base}/`);
  await page.waitForSelector('#main[data-item-id]');
  await page.waitForLoadState('networkidle');
  page.off('response', count);
  result.page_weight = weight;

  // First render: navigation start to the first item on screen, on fresh loads.
  const renders = [];
  for (let i = 0; i < 5; i++) {
    await page.reload();
    await page.waitForSelector('#main[data-item-id]');
    renders.push(await page.evaluate(() => performance.getEntriesByName('mmloop:first-item')[0].startTime));
  }
  renders.sort((a, b) => a - b);
  result.first_render_ms = { runs: renders, median: renders[2], max: renders[4] };

  const state = () => page.evaluate(() => {
    const m = document.getElementById('main');
    return { id: Number(m.dataset.itemId || 0), status: m.dataset.status, empty: m.dataset.empty === '1' };
  });
  const waitMoved = async (from) => {
    await page.waitForFunction((id) => {
      const m = document.getElementById('main');
      return m.dataset.empty === '1' || Number(m.dataset.itemId) !== id;
    }, from);
    await page.waitForSelector('#history-body:not(.muted)').catch(() => {});
  };
  const escaped = async () => page.evaluate(() => ({
    question: document.getElementById('question')?.textContent,
    candidate: document.getElementById('candidate-answer')?.textContent ?? null,
    answer: document.getElementById('answer')?.textContent ?? null,
    injected: document.querySelectorAll('#info-pane img, #info-pane script, #info-pane iframe').length,
    xss: window.__xss === undefined ? null : window.__xss,
    marks: [...document.querySelectorAll('mark.flagged')].map((m) => [m.dataset.flag, m.textContent]),
  }));

  // Ten decisions, keys only. The plan: accept, accept, edit, reject, skip, accept, undo the
  // last one and decide it again, then accept until ten saves are in.
  const seen = [];
  let edited = null;
  let undone = null;
  let shot = false;
  const plan = ['Enter', 'a', 'e', 'r', 's', 'a', 'u', 'a', 'Enter', 'a', 'a'];
  for (const key of plan) {
    const before = await state();
    assert.ok(!before.empty, `the queue ran dry after ${result.decisions.length} decisions`);
    const shown = await escaped();
    seen.push({ id: before.id, ...shown });
    assert.equal(shown.injected, 0, `item ${before.id}: text was rendered as HTML`);
    assert.equal(shown.xss, null, `item ${before.id}: injected script ran`);
    if (!shot && shown.marks.some((m) => m[0] === 'hedge')) {
      await page.screenshot({ path: join(out, 'review.png') });
      shot = true;
    }
    if (key === 'e') {
      await page.keyboard.press('e');
      await page.waitForSelector('#edit-text:focus');
      await page.keyboard.press('Control+A');
      await page.keyboard.type('edited by the e2e test');
      await page.keyboard.press('Enter');
      edited = before.id;
      await waitMoved(before.id);
      result.decisions.push({ id: before.id, action: 'edit' });
    } else if (key === 'u') {
      const last = result.decisions[result.decisions.length - 1];
      await page.keyboard.press('u');
      await page.waitForFunction((id) => Number(document.getElementById('main').dataset.itemId) === id, last.id);
      await page.waitForFunction(() => ['pending', 'imported'].includes(document.getElementById('main').dataset.status));
      undone = last.id;
      result.undo = { id: last.id, undid: last.action };
    } else {
      await page.keyboard.press(key);
      await waitMoved(before.id);
      const action = { Enter: 'accept', a: 'accept', r: 'reject', s: 'skip' }[key];
      result.decisions.push({ id: before.id, action });
    }
  }
  assert.equal(result.decisions.length, 10, 'ten decisions were saved');
  result.edited = edited;
  result.undone = undone;
  result.seen = seen;

  // Navigating back shows the decided item with its history.
  const now = await state();
  await page.keyboard.press('ArrowLeft');
  await waitMoved(now.id);
  const back = await state();
  result.back = back;
  await page.keyboard.press('ArrowRight');
  await page.waitForFunction((id) => Number(document.getElementById('main').dataset.itemId) === id, now.id);

  // The help overlay opens with ? and closes with Escape.
  await page.keyboard.press('?');
  await page.waitForSelector('#help:not([hidden])');
  await page.keyboard.press('Escape');
  await page.waitForSelector('#help[hidden]', { state: 'attached' });

  // What the server recorded, through the API the page uses.
  result.audit = await page.evaluate(async () => (await (await fetch('/api/audit?limit=200')).json()).events
    .filter((e) => e.action === 'label.save').map((e) => ({ entity: e.entity, actor: e.actor, action: e.after.action })));
  result.edited_history = await page.evaluate(async (id) => (await (await fetch(`/api/items/${id}/history`)).json()).labels, edited);
  if (!shot) await page.screenshot({ path: join(out, 'review.png') });

  await page.goto(`${base}/stats`);
  await page.waitForSelector('#reviewers');
  await page.screenshot({ path: join(out, 'stats.png'), fullPage: true });

  // The experiments page: the tables, and both plots loaded as images.
  await page.goto(`${base}/experiments`);
  await page.waitForSelector('.experiment .ab-comparisons');
  await page.waitForFunction(() => [...document.querySelectorAll('img.ab-plot')].every((i) => i.complete));
  result.experiment = await page.evaluate(() => ({
    plots: [...document.querySelectorAll('img.ab-plot')].map((i) => i.naturalWidth),
    verdict: document.querySelector('.ab-comparisons .verdict').textContent,
    arm: document.querySelectorAll('.ab-arms tbody tr')[1].cells[0].textContent,
  }));
  await page.screenshot({ path: join(out, 'experiments.png'), fullPage: true });
} catch (e) {
  problems.push(`failed: ${e.stack || e}`);
} finally {
  await browser.close();
}
result.problems = problems;
writeFileSync(join(out, 'result.json'), JSON.stringify(result, null, 1));
if (problems.length) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log(`e2e ok: ${result.decisions.length} decisions, first render median ${result.first_render_ms.median.toFixed(0)} ms, page weight ${result.page_weight.bytes} bytes`);
