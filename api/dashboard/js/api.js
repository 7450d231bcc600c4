// The API, as any client calls it.  The bearer token lives in sessionStorage (gone when the
// tab closes) and is sent only in the Authorization header, never in a URL.

const TOKEN_KEY = 'iotmon.token';

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
  window.dispatchEvent(new CustomEvent('iotmon:token'));
}

export class ApiError extends Error {
  constructor(status, message, details) {
    super(message);
    this.status = status;
    this.details = details;
  }
}

// Whether this deployment answers reads without a token (/dashboard/config.json).
let openReads = false;

export function setOpenReads(value) {
  openReads = Boolean(value);
}

/**
 * JSON from the API; ApiError with the API's own message for a 4xx/5xx.
 * A 401 to a request that carried the kept token means the token is no longer valid: it is
 * dropped (the header shows signed out, 'iotmon:signedout' asks to sign in again) and, when
 * reads are open, a read is tried once more without it.  `check` (signing in) skips that.
 */
export async function api(path, { method = 'GET', body, signal, check = false, anonymous = false } = {}) {
  const headers = { Accept: 'application/json' };
  const bearer = anonymous ? null : token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      credentials: 'omit',
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, err.message || 'network error');
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.status === 401 && bearer && !check) {
    if (token() === bearer) {
      setToken(null);
      window.dispatchEvent(new CustomEvent('iotmon:signedout'));
    }
    if (method === 'GET' && openReads) return api(path, { method, body, signal, anonymous: true });
  }
  if (!response.ok) {
    const error = data && data.error ? data.error : {};
    throw new ApiError(response.status, error.message || response.statusText, error.details);
  }
  return data;
}

/**
 * Every row of a list endpoint that pages with skip/limit (its order is stable), asked for
 * `size` rows at a time until a page comes back short.  A row that moved between two pages
 * (the list changed meanwhile) is kept once, by `key`, and pages overlap by a tenth so
 * that up to that many rows removed meanwhile hide no other; the reading stops at a page
 * that brings nothing new.
 */
export async function apiAll(path, { key, size = 1000, signal } = {}) {
  const join = path.includes('?') ? '&' : '?';
  const rows = [];
  const seen = new Set();
  // Pages overlap (by key): a row removed between two requests moves the next page up,
  // and would hide the row that moved across the boundary.
  const overlap = key ? Math.floor(size / 10) : 0;
  for (let skip = 0; ; skip += size - overlap) {
    // eslint-disable-next-line no-await-in-loop
    const page = await api(`${path}${join}limit=${size}&skip=${skip}`, { signal });
    if (!Array.isArray(page)) throw new ApiError(0, `${path}: not a list`);
    const before = rows.length;
    for (const row of page) {
      const id = key ? row[key] : null;
      if (id !== null && id !== undefined) {
        if (seen.has(id)) continue;
        seen.add(id);
      }
      rows.push(row);
    }
    // A short page is the last; a full page of rows already seen means the server does
    // not page (a proxy that drops `skip`), and asking on would never end.
    if (page.length < size || rows.length === before) return rows;
  }
}

/** The API's message, with each field error it lists ("body.max_value: ..."). */
export function errorText(err) {
  if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
  const lines = [err.message];
  if (Array.isArray(err.details)) {
    for (const d of err.details) {
      const where = Array.isArray(d.loc) ? d.loc.join('.') : '';
      if (d.msg && !err.message.includes(d.msg)) lines.push(where ? `${where}: ${d.msg}` : d.msg);
    }
  }
  return lines.join(' — ');
}

/** Query string of the non-empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}
