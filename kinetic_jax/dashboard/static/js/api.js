// Talking to the JSON margin service of the same server.

// One id per page load: the server drops a queued request of this page when a
// newer one to the same endpoint arrives (409), so superseded work never runs.
export const PAGE_ID = Math.random().toString(36).slice(2, 12);

const UNREACHABLE = "the server cannot be reached (is `kinetic-jax dashboard` still running?)";

// -> {ok, status, data, error, unreachable, busy, superseded, retryAfter}
export async function api(method, path, body, { contentType = "application/json", signal } = {}) {
  const opts = { method, headers: { "X-Kinetic-Page": PAGE_ID }, signal };
  if (method !== "GET") {
    opts.headers["Content-Type"] = contentType;
    if (body !== undefined) opts.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  let res;
  try { res = await fetch(path, opts); }
  catch (e) {
    const aborted = e && e.name === "AbortError";
    return { ok: false, status: 0, unreachable: !aborted, superseded: aborted,
      error: { field: "", path: [], detail: UNREACHABLE, message: UNREACHABLE } };
  }
  const text = await res.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { data = text; }
  if (!res.ok) {
    const fallback = { field: "", path: [], detail: `HTTP ${res.status}`, message: `HTTP ${res.status}` };
    const error = (data && data.error) || fallback;
    return { ok: false, status: res.status, error, busy: res.status === 503, superseded: res.status === 409,
      retryAfter: Number(res.headers.get("Retry-After")) || 1 };
  }
  return { ok: true, status: res.status, data };
}

export async function download(path, body) {
  const res = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json", "X-Kinetic-Page": PAGE_ID }, body: JSON.stringify(body) })
    .catch(() => null);
  if (!res) return { ok: false, message: UNREACHABLE };
  if (!res.ok) {
    let message;
    try { message = (await res.json()).error.message; } catch (x) { message = `HTTP ${res.status}`; }
    return { ok: false, message };
  }
  return { ok: true, blob: await res.blob() };
}
