// The app shell: who is logged in, the navigation, and which view to show.
import { get, post, setCsrf } from './api.js';
import { $, toast } from './dom.js';

const views = {
  '/': () => import('./review.js'),
  '/stats': () => import('./stats.js'),
  '/experiments': () => import('./experiments.js'),
  '/users': () => import('./users.js'),
};

function toggleHelp(show) {
  const help = $('#help');
  help.hidden = show === undefined ? !help.hidden : !show;
}

async function main() {
  const me = await get('/api/me');
  setCsrf(me.csrf);
  $('#project').textContent = me.project;
  $('#whoami').textContent = `${me.user.name} · ${me.user.role}`;
  $('#nav-users').hidden = !me.can.manage_users;
  const path = location.pathname in views ? location.pathname : '/';
  for (const a of document.querySelectorAll('header nav a')) {
    if (a.getAttribute('href') === path) a.setAttribute('aria-current', 'page');
  }
  $('#logout').addEventListener('click', async () => {
    await post('/api/logout').catch(() => {});
    location.assign('/login');
  });
  $('#help-button').addEventListener('click', () => toggleHelp());
  $('#help').addEventListener('click', (e) => { if (e.target.id === 'help') toggleHelp(false); });
  document.addEventListener('keydown', (e) => {
    if (e.key === '?' && !e.target.closest('input, textarea, select')) { e.preventDefault(); toggleHelp(); }
    else if (e.key === 'Escape' && !$('#help').hidden) { e.preventDefault(); e.stopImmediatePropagation(); toggleHelp(false); }
  }, true);
  const view = await views[path]();
  await view.mount($('#main'), me);
}

main().catch((e) => toast(e.message, 'error'));
