// Users and API tokens (admins): add, change role, disable; make and revoke tokens.
import { get, post, patch, del } from './api.js';
import { h, toast, when } from './dom.js';

const ROLES = ['viewer', 'annotator', 'reviewer', 'admin'];

async function render(root) {
  const [{ users }, { tokens }] = await Promise.all([get('/api/users'), get('/api/tokens?all=true')]);
  const roleSelect = (u) => {
    const s = h('select', { 'aria-label': `role of ${u.name}`, onchange: async () => {
      try { await patch(`/api/users/${encodeURIComponent(u.name)}`, { role: s.value }); toast(`${u.name} is now ${s.value}`); } catch (e) { toast(e.message, 'error'); s.value = u.role; }
    } }, ROLES.map((r) => h('option', { value: r }, r)));
    s.value = u.role;
    return s;
  };
  const toggle = (u) => h('button', { type: 'button', onclick: async () => {
    try { await patch(`/api/users/${encodeURIComponent(u.name)}`, { disabled: !u.disabled }); await render(root); } catch (e) { toast(e.message, 'error'); }
  } }, u.disabled ? 'Enable' : 'Disable');
  const name = h('input', { placeholder: 'name', required: true, autocomplete: 'off' });
  const pw = h('input', { placeholder: 'password (8+ characters)', type: 'password', autocomplete: 'new-password', minlength: 8 });
  const role = h('select', {}, ROLES.map((r) => h('option', { value: r }, r)));
  role.value = 'reviewer';
  const tname = h('input', { placeholder: 'token name, e.g. ci', required: true, autocomplete: 'off' });
  const tuser = h('select', {}, users.map((u) => h('option', { value: u.name }, u.name)));
  const tdays = h('input', { type: 'number', min: 1, max: 3650, value: 90, 'aria-label': 'expires after days', class: 'days' });
  const tpw = h('input', { type: 'password', placeholder: 'your password', required: true, autocomplete: 'current-password', 'aria-label': 'your password' });
  const shown = h('div', { class: 'secret' });
  root.replaceChildren(h('section', { class: 'users' },
    h('h1', {}, 'Users'),
    h('table', { class: 'rates' },
      h('thead', {}, h('tr', {}, ['name', 'role', 'state', 'created', 'by', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, users.map((u) => h('tr', { class: u.disabled ? 'muted' : '' },
        h('td', {}, u.name), h('td', {}, roleSelect(u)), h('td', {}, u.disabled ? 'disabled' : 'active'),
        h('td', {}, when(u.created_at)), h('td', {}, u.created_by), h('td', {}, toggle(u)))))),
    h('form', { class: 'inline-form', onsubmit: async (e) => {
      e.preventDefault();
      try { await post('/api/users', { name: name.value, role: role.value, password: pw.value || null }); toast(`added ${name.value}`); await render(root); } catch (err) { toast(err.message, 'error'); }
    } }, h('b', {}, 'Add a user '), name, role, pw, h('button', { type: 'submit' }, 'Add')),
    h('h1', {}, 'API tokens'),
    h('table', { class: 'rates' },
      h('thead', {}, h('tr', {}, ['user', 'name', 'token', 'created', 'expires', 'state', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, tokens.map((t) => h('tr', { class: t.revoked_at ? 'muted' : '' },
        h('td', {}, t.user), h('td', {}, t.name), h('td', {}, h('code', {}, `${t.prefix}…`)), h('td', {}, when(t.created_at)),
        h('td', {}, t.expires_ms ? new Date(t.expires_ms).toLocaleDateString() : 'never'),
        h('td', {}, t.revoked_at ? 'revoked' : 'active'),
        h('td', {}, t.revoked_at ? '' : h('button', { type: 'button', onclick: async () => {
          try { await del(`/api/tokens/${t.id}`); await render(root); } catch (e) { toast(e.message, 'error'); }
        } }, 'Revoke')))))),
    h('form', { class: 'inline-form', onsubmit: async (e) => {
      e.preventDefault();
      try {
        const out = await post('/api/tokens', { name: tname.value, user: tuser.value, expires_days: Number(tdays.value), password: tpw.value });
        await render(root);
        root.querySelector('.secret').replaceChildren(h('p', {}, `Token for ${out.info.user} (shown once; send it as "Authorization: Bearer …"):`),
          h('input', { readonly: true, value: out.token, class: 'token-value', onfocus: (ev) => ev.target.select() }));
      } catch (err) { toast(err.message, 'error'); }
    } }, h('b', {}, 'New token '), tuser, tname, h('span', {}, ' expires in '), tdays, h('span', {}, ' days '), tpw, h('button', { type: 'submit' }, 'Create')),
    shown));
}

export async function mount(root, me) {
  if (!me.can.manage_users) {
    root.replaceChildren(h('p', { class: 'muted' }, 'Only admins manage users.'));
    return;
  }
  await render(root);
}
