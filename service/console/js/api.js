// The API as the console uses it: every request carries `Authorization: Bearer <key>` (the key
// the user pasted, kept in sessionStorage). Job events are read with fetch() and a stream
// reader, because EventSource cannot send headers.

const KEY_ITEM = "visionjobs.apiKey";
// The API root relative to this module (/console/js/api.js -> /), so a path prefix in front of
// the service keeps working.
export const API_ROOT = new URL("../../", import.meta.url);
export const FINAL = new Set(["succeeded", "failed", "canceled"]);

export const auth = {
  get key() {
    return sessionStorage.getItem(KEY_ITEM) || "";
  },
  set(key) {
    sessionStorage.setItem(KEY_ITEM, key);
  },
  clear() {
    sessionStorage.removeItem(KEY_ITEM);
  },
};

export class ApiError extends Error {
  constructor(status, problem) {
    const detail = typeof problem === "object" && problem ? problem.detail || problem.title : problem;
    super(detail ? String(detail) : `HTTP ${status}`);
    this.status = status;
    this.problem = typeof problem === "object" ? problem : null;
  }

  /** A one-paragraph description: the detail plus each field error. */
  describe() {
    const errors = this.problem?.errors || [];
    const fields = errors.map((e) => `${e.field}: ${e.message}`).filter((t) => !this.message.includes(t));
    return [this.message, ...fields].join(" — ");
  }
}

function headers(extra = {}) {
  const h = { ...extra };
  const key = auth.key;
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

export function url(path) {
  return new URL(path.replace(/^\//, ""), API_ROOT).href;
}

async function body(res) {
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

export async function api(path, { method = "GET", json, form, signal, headers: extra } = {}) {
  const init = { method, headers: headers(extra), signal, cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form) {
    init.body = form;
  }
  const res = await fetch(url(path), init);
  const data = await body(res);
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export function uploadFile(file, { signal } = {}) {
  const form = new FormData();
  form.append("file", file, file.name || "upload");
  return api("/v1/uploads", { method: "POST", form, signal });
}

export const getJob = (id, opts) => api(`/v1/jobs/${encodeURIComponent(id)}`, opts);
export const cancelJob = (id) => api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });

export function listJobs({ status, kind, cursor, limit = 25 } = {}, opts) {
  const q = new URLSearchParams({ limit: String(limit) });
  if (status) q.set("status", status);
  if (kind) q.set("kind", kind);
  if (cursor) q.set("cursor", cursor);
  return api(`/v1/jobs?${q}`, opts);
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

/** Parse the server-sent-event frames complete in `buffer`; returns [frames, rest]. */
export function parseFrames(buffer) {
  const text = buffer.replace(/\r\n/g, "\n");
  const frames = [];
  let start = 0;
  for (let end = text.indexOf("\n\n"); end >= 0; end = text.indexOf("\n\n", start)) {
    const frame = { event: "message", data: [], id: null };
    for (const line of text.slice(start, end).split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") frame.data.push(value);
      else if (field === "event") frame.event = value;
      else if (field === "id") frame.id = value;
    }
    if (frame.data.length || frame.id !== null) frames.push({ ...frame, data: frame.data.join("\n") });
    start = end + 2;
  }
  return [frames, text.slice(start)];
}

/**
 * Follow a job over GET /v1/jobs/{id}/events until it is final: `onJob(job)` for every state.
 * Reconnects with Last-Event-ID after a dropped connection; resolves with the final job (or the
 * last one seen when the job expired), rejects on 4xx or when `signal` aborts.
 */
export async function streamJob(id, onJob, { signal } = {}) {
  let lastId = null;
  let last = null;
  let delay = 500;
  while (!signal?.aborted) {
    try {
      const h = headers({ Accept: "text/event-stream" });
      if (lastId) h["Last-Event-ID"] = lastId;
      const res = await fetch(url(`/v1/jobs/${encodeURIComponent(id)}/events`), { headers: h, signal, cache: "no-store" });
      if (!res.ok) throw new ApiError(res.status, await body(res));
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        delay = 500;
        let frames;
        [frames, buffer] = parseFrames(buffer + value);
        for (const frame of frames) {
          if (frame.id) lastId = frame.id;
          if (frame.event === "gone") return last;
          if (frame.event !== "job") continue;
          last = JSON.parse(frame.data);
          onJob(last);
        }
      }
      if (last && FINAL.has(last.status)) return last;
    } catch (err) {
      if (signal?.aborted) break;
      if (err instanceof ApiError && err.status < 500 && err.status !== 429) throw err;
    }
    await sleep(delay, signal);
    delay = Math.min(delay * 2, 10000);
  }
  throw new DOMException("stream aborted", "AbortError");
}
