// Small DOM helpers. Text from the API is only ever set as text (never parsed as HTML).

/** h("tag.class", {attr: value, onclick: fn, dataset: {...}}, ...children) */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "text") el.textContent = value;
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (name in el && typeof value !== "string") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

export const STATUS_LABEL = {
  queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", canceled: "Canceled",
};

export function statusBadge(status) {
  return h(`span.badge.status-${status}`, { dataset: { status } }, STATUS_LABEL[status] || status);
}

/** A fixed-size progress bar with its stage line under it (no layout shift while it moves). */
export function progressView(label) {
  const bar = h("progress.bar", { max: 1, value: 0, "aria-label": label });
  const pct = h("span.pct", { "aria-hidden": "true" }, "0%");
  const stage = h("span.stage-text", {}, "\u00a0");
  const root = h("div.progress", {}, h("div.progress-row", {}, bar, pct), stage);
  return {
    root,
    update(job) {
      const p = Math.max(0, Math.min(1, job.progress || 0));
      bar.value = p;
      bar.setAttribute("aria-valuetext", `${Math.round(p * 100)}%${job.stage ? `, ${job.stage}` : ""}`);
      pct.textContent = `${Math.round(p * 100)}%`;
      root.dataset.status = job.status;
      let text = job.stage || STATUS_LABEL[job.status] || "";
      if (job.status === "queued" && job.queue_position) text = `queued, position ${job.queue_position}`;
      stage.textContent = text || "\u00a0";
      stage.title = text;
    },
  };
}

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function fmtDuration(ms) {
  if (ms == null || Number.isNaN(ms)) return "";
  if (ms < 1000) return `${Math.max(0, Math.round(ms))} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

export function relTime(iso) {
  if (!iso) return "";
  const diff = Date.now() - new Date(iso).getTime();
  if (diff < 5000) return "just now";
  if (diff < 3600e3) return `${fmtDuration(diff).replace(/ \d+ s$/, "")} ago`;
  return fmtTime(iso);
}

export function timeEl(iso, text) {
  return h("time", { datetime: iso || "", title: fmtTime(iso) }, text ?? fmtTime(iso));
}

/** A message region; `show(text, kind)` with kind "error" | "info" | "" (hide). */
export function messageBox() {
  const el = h("div.message", { role: "alert", hidden: true });
  return {
    root: el,
    show(text, kind = "error") {
      el.hidden = !text;
      el.textContent = text || "";
      el.className = `message ${kind}`;
    },
  };
}

export const KIND_LABEL = {
  colorize: "Colorize",
  "video.generate": "Video generation",
  "video.edit": "Video edit",
  "anomaly.fit": "Anomaly fit",
  "anomaly.score": "Anomaly score",
  "subject.generate": "Subject generation",
  "subject.tune": "Subject tuning",
};
