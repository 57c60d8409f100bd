// Talking to corrald's /v1: the session token lives in sessionStorage (this tab only) and goes in the
// Authorization header of every request; no cookies, so no CSRF. Every error is the API's one-line message.
const KEY = 'corral.session';

function load() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || 'null');
  } catch {
    return null;
  }
}

export const session = $state({ current: load() });

export function saveSession(s) {
  session.current = s;
  if (s) sessionStorage.setItem(KEY, JSON.stringify(s));
  else sessionStorage.removeItem(KEY);
}

export function headers(extra = {}) {
  const h = { ...extra };
  if (session.current?.token) h.Authorization = `Bearer ${session.current.token}`;
  return h;
}

export class APIError extends Error {
  constructor(status, error, message) {
    super(message);
    this.status = status;
    this.error = error;
  }
}

async function errorOf(r) {
  let body = null;
  try {
    body = await r.json();
  } catch {
    /* not JSON */
  }
  const message = body?.message || `${r.status} ${r.statusText || 'error'}`;
  if (r.status === 401 && session.current) saveSession(null); // the token expired or was revoked: log in again
  return new APIError(r.status, body?.error || 'HTTPError', String(message).split('\n')[0]);
}

export async function api(method, path, body) {
  let r;
  try {
    r = await fetch(`/v1${path}`, {
      method,
      headers: headers(body !== undefined ? { 'Content-Type': 'application/json' } : {}),
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
  } catch (e) {
    throw new APIError(0, 'NetworkError', `cannot reach corrald: ${e.message}`);
  }
  if (!r.ok) throw await errorOf(r);
  if (r.status === 204) return null;
  const type = r.headers.get('content-type') || '';
  if (type.includes('ndjson')) return ndjsonLast(r);
  return type.includes('json') ? r.json() : r.text();
}

// An NDJSON operation stream (clone): its last line, or its error line as an APIError.
async function ndjsonLast(r) {
  let last = null;
  await readLines(r, (obj) => {
    last = obj;
  });
  if (last?.kind === 'error') throw new APIError(last.status || 500, last.error || 'Error', last.message);
  return last;
}

async function readLines(r, onObject) {
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line) onObject(JSON.parse(line)); // empty lines are heartbeats
    }
  }
}

// The event stream, read with fetch() (EventSource cannot send the Authorization header); reconnects after
// `after` the last id seen until `signal` aborts. `onError` gets the one-line message of a failed attempt.
export async function followEvents(query, onEvent, signal, onError = () => {}) {
  let after = 0;
  while (!signal.aborted) {
    try {
      const q = new URLSearchParams({ ...query, ...(after ? { after: String(after) } : {}) });
      const r = await fetch(`/v1/events/stream?${q}`, { headers: headers(), signal });
      if (!r.ok) throw await errorOf(r);
      onError(null);
      await readLines(r, (e) => {
        if (e.error) throw new APIError(500, 'StreamError', e.error);
        after = Math.max(after, e.id);
        onEvent(e);
      });
    } catch (e) {
      if (signal.aborted) return;
      onError(e.message);
      if (e.status === 401) return;
    }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

// A one-use console ticket, then the websocket URL that redeems it (wss:// under https).
// A page that follows the event stream: refresh() now, and again after the events matching `query` (a burst at
// most every 300 ms). Returns the clean-up, for an $effect to return.
export function liveRefresh(query, refresh, onError) {
  let timer = null;
  const soon = () => {
    if (timer === null) timer = setTimeout(() => ((timer = null), refresh()), 300);
  };
  refresh();
  const ctl = new AbortController();
  followEvents(query, soon, ctl.signal, onError);
  return () => {
    ctl.abort();
    clearTimeout(timer);
  };
}

export async function consoleURL(name, kind) {
  const { ticket } = await api('POST', `/vms/${encodeURIComponent(name)}/console/tickets`, { kind });
  const proto = location.protocol === 'https:' ? 'wss' : 'ws';
  const path = kind === 'vnc' ? 'vnc' : 'console';
  return `${proto}://${location.host}/v1/vms/${encodeURIComponent(name)}/${path}?ticket=${encodeURIComponent(ticket)}`;
}

export function mib(bytes) {
  return bytes == null ? '' : `${Math.round(bytes / 1048576)}`;
}

// GET /metrics (Prometheus text, from the metrics part of issue 13), with the token; null where there is none.
// Only the per-VM samples the list shows: CPU seconds (for a CPU %), RSS, and each VM's host label.
export async function vmSamples() {
  let r;
  try {
    r = await fetch('/metrics', { headers: headers() });
  } catch {
    return null;
  }
  if (!r.ok) return null;
  const out = {};
  const line = /^(corral_vm_cpu_seconds_total|corral_vm_memory_rss_bytes)\{([^}]*)\} ([0-9.eE+-]+)/;
  for (const l of (await r.text()).split('\n')) {
    const m = line.exec(l);
    if (!m) continue;
    const labels = Object.fromEntries([...m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    const vm = (out[labels.vm] ??= { host: labels.host });
    vm[m[1] === 'corral_vm_cpu_seconds_total' ? 'cpu' : 'rss'] = Number(m[3]);
  }
  return out;
}
