// The jobs page: this tenant's jobs, newest first, live. The list is re-read every few seconds
// (new jobs, final states); active jobs also stream their progress over SSE. Browsers allow
// about six connections per host over HTTP/1.1, so at most MAX_STREAMS jobs stream at once.
import { cancelJob, FINAL, listJobs, streamJob } from "./api.js";
import { jobText, jobThumb } from "./summary.js";
import { clear, h, KIND_LABEL, messageBox, progressView, relTime, statusBadge, timeEl } from "./ui.js";

const MAX_STREAMS = 3;
const POLL_MS = 4000;
const PAGE = 25;

export function renderJobs(main) {
  document.title = "Jobs · visionjobs";
  const rows = new Map(); // id -> {job, tr, progress, statusCell, actionCell, stream}
  const msg = messageBox();
  const filters = { status: "", kind: "" };
  let cursor = null;
  let stopped = false;
  let timer = null;

  const statusSel = h("select", { id: "status-filter", onchange: () => { filters.status = statusSel.value; reload(); } },
    h("option", { value: "" }, "All"),
    ...["queued", "running", "succeeded", "failed", "canceled"].map((s) => h("option", { value: s }, s)));
  const kindSel = h("select", { id: "kind-filter", onchange: () => { filters.kind = kindSel.value; reload(); } },
    h("option", { value: "" }, "All"),
    ...Object.entries(KIND_LABEL).map(([k, label]) => h("option", { value: k }, label)));
  const tbody = h("tbody");
  const empty = h("p.empty-note", { hidden: true }, "No jobs yet. Submit one from a form (",
    h("a", { href: "#/playground" }, "colorize"), ", ", h("a", { href: "#/subject" }, "subject"), ", ",
    h("a", { href: "#/video" }, "video"), ", ", h("a", { href: "#/anomaly" }, "anomaly"), ") or through the API.");
  const more = h("button.secondary", { type: "button", hidden: true, onclick: () => load(true) }, "Load more");
  const live = h("span.live", { "aria-live": "off" }, "live");

  main.append(h("section.panel", {},
    h("div.page-head", {}, h("h1", {}, "Jobs"), live),
    h("div.toolbar", { role: "group", "aria-label": "Filters" },
      h("label", { for: "status-filter" }, "Status"), statusSel,
      h("label", { for: "kind-filter" }, "Kind"), kindSel,
      h("button.secondary", { type: "button", onclick: () => reload() }, "Refresh")),
    msg.root,
    h("div.table-wrap", {},
      h("table.jobs.job-list", {},
        h("caption.sr-only", {}, "Jobs, newest first"),
        h("colgroup", {}, h("col.c-job"), h("col.c-kind"), h("col.c-status"), h("col.c-progress"), h("col.c-created"),
          h("col.c-actions")),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Job"), h("th", { scope: "col" }, "Kind"),
          h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Progress"), h("th", { scope: "col" }, "Created"),
          h("th", { scope: "col" }, h("span.sr-only", {}, "Actions")))),
        tbody)),
    empty, more));

  function row(job) {
    const progress = progressView(`Progress of ${job.id}`);
    const statusCell = h("td.c-status", { dataset: { label: "Status" } });
    const actionCell = h("td.actions");
    const created = h("td.c-created", { dataset: { label: "Created" } }, timeEl(job.created_at, relTime(job.created_at)));
    const thumb = h("span.thumb", { "aria-hidden": "true" });
    const text = jobText(job);
    const tr = h("tr", { dataset: { jobId: job.id } },
      h("th.c-job", { scope: "row" }, h("a.job-link", { href: `#/jobs/${job.id}` }, thumb,
        h("span.job-summary", {}, h("span.job-text", { title: text }, text || KIND_LABEL[job.kind] || job.kind),
          h("code", {}, job.id)))),
      h("td.c-kind", { dataset: { label: "Kind" } }, KIND_LABEL[job.kind] || job.kind), statusCell,
      h("td.c-progress", {}, progress.root), created, actionCell);
    const entry = { job: null, tr, progress, statusCell, actionCell, created, thumb, stream: null, canceling: false };
    rows.set(job.id, entry);
    update(entry, job);
    return entry;
  }

  function update(entry, job) {
    if (entry.job && job.status === entry.job.status && job.progress === entry.job.progress
        && job.stage === entry.job.stage && job.queue_position === entry.job.queue_position) return;
    const statusChanged = !entry.job || entry.job.status !== job.status;
    entry.job = job;
    entry.tr.dataset.status = job.status;
    entry.progress.update(job);
    if (statusChanged) {
      showThumb(entry, job);
      clear(entry.statusCell).append(statusBadge(job.status));
      clear(entry.actionCell);
      if (!FINAL.has(job.status)) {
        const btn = h("button.danger", { type: "button", "aria-label": `Cancel job ${job.id}`, onclick: () => cancel(entry, btn) },
          entry.canceling ? "Canceling…" : "Cancel");
        btn.disabled = entry.canceling;
        entry.actionCell.append(btn);
      }
    }
  }

  async function showThumb(entry, job) {
    const src = await jobThumb(job);
    if (!src || stopped || entry.thumb.dataset.src === src) return;
    entry.thumb.dataset.src = src;
    entry.thumb.replaceChildren(h("img", { src, alt: "", loading: "lazy", width: 48, height: 48 }));
  }

  async function cancel(entry, btn) {
    entry.canceling = true;
    btn.disabled = true;
    btn.textContent = "Canceling…";
    try {
      update(entry, await cancelJob(entry.job.id));
    } catch (err) {
      entry.canceling = false;
      btn.disabled = false;
      btn.textContent = "Cancel";
      msg.show(`Could not cancel ${entry.job.id}: ${err.describe ? err.describe() : err.message}`);
    }
  }

  function startStreams() {
    if (stopped) return;
    let open = [...rows.values()].filter((e) => e.stream).length;
    const waiting = [...rows.values()].filter((e) => !e.stream && !FINAL.has(e.job.status))
      .sort((a, b) => (a.job.status === "running" ? -1 : 1) - (b.job.status === "running" ? -1 : 1));
    for (const entry of waiting) {
      if (open >= MAX_STREAMS) break;
      open += 1;
      const ctrl = new AbortController();
      entry.stream = ctrl;
      streamJob(entry.job.id, (job) => update(entry, job), { signal: ctrl.signal })
        .catch(() => {})
        .finally(() => {
          if (entry.stream === ctrl) entry.stream = null;
          startStreams();
        });
    }
  }

  async function load(append = false) {
    try {
      const page = await listJobs({ ...filters, limit: PAGE, cursor: append ? cursor : undefined });
      if (stopped) return;
      msg.show("");
      if (append || cursor === null) cursor = page.next_cursor; // a refresh keeps the "load more" position
      const seen = new Set();
      let before = tbody.firstChild;
      for (const job of page.items) {
        seen.add(job.id);
        const entry = rows.get(job.id);
        if (entry) {
          if (!entry.stream) update(entry, job);
          entry.created.firstChild.textContent = relTime(job.created_at);
          if (!append) before = entry.tr.nextSibling;
        } else if (append) {
          tbody.append(row(job).tr);
        } else {
          tbody.insertBefore(row(job).tr, before); // new jobs appear at the top, in order
        }
      }
      if (!append && !rows.size) cursor = null;
      more.hidden = !cursor;
      empty.hidden = rows.size > 0;
      startStreams();
    } catch (err) {
      if (!stopped) msg.show(`Could not load jobs: ${err.describe ? err.describe() : err.message}`);
    }
  }

  function reload() {
    for (const e of rows.values()) e.stream?.abort();
    rows.clear();
    clear(tbody);
    cursor = null;
    load();
  }

  function tick() {
    if (stopped) return;
    const next = () => { if (!stopped) timer = setTimeout(tick, POLL_MS); };
    if (document.hidden) next();
    else load(false).finally(next);
  }

  load().then(() => { if (!stopped) timer = setTimeout(tick, POLL_MS); });

  return () => {
    stopped = true;
    clearTimeout(timer);
    for (const e of rows.values()) e.stream?.abort();
  };
}
