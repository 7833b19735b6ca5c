// The one way the page talks to the server: JSON in, JSON out, the CSRF token on every
// request that changes something, and back to the login page when the session ends.

let csrf = null;
export function setCsrf(t) { csrf = t; }

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
  }
}

const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrf) headers['X-CSRF-Token'] = csrf;
  let r;
  // 503 busy (another process, an import say, holds the database): nothing was done, so
  // the same request is safe to send again after the time the server asks for.
  for (let attempt = 0; ; attempt += 1) {
    r = await fetch(path, {
      method, headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status !== 503 || attempt >= 4) break;
    await sleep(1000 * Math.min(10, Number(r.headers.get('Retry-After')) || 1));
  }
  if (r.status === 401 && path !== '/api/login') {
    location.assign('/login');
    throw new ApiError(401, { message: 'your session ended: log in again' });
  }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const get = (p) => api('GET', p);
export const post = (p, b = {}) => api('POST', p, b);
export const patch = (p, b) => api('PATCH', p, b);
export const del = (p) => api('DELETE', p);

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}
