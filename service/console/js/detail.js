// One job: status and progress (live over SSE), timeline, outputs, error and parameters.
import { ApiError, cancelJob, FINAL, getJob, streamJob } from "./api.js";
import { inputName, inputUrl } from "./inputs.js";
import { clear, fmtDuration, fmtTime, h, KIND_LABEL, messageBox, progressView, statusBadge, timeEl } from "./ui.js";
import { subjectResult } from "./subject.js";
import { anomalyView, compareView, figure, fmtNum, scoreTable, videoView } from "./views.js";

export function renderDetail(main, id) {
  document.title = `${id} · visionjobs`;
  const ctrl = new AbortController();
  const msg = messageBox();
  const progress = progressView(`Progress of ${id}`);
  const meta = h("p.meta");
  const actions = h("div.actions");
  const timeline = h("div.timeline-wrap");
  const errorBox = h("section.panel.error-panel", { hidden: true, "aria-labelledby": "error-h" });
  const outputs = h("section.panel", { "aria-labelledby": "outputs-h" }, h("h2", { id: "outputs-h" }, "Outputs"));
  const outBody = h("div.outputs", { "aria-live": "polite" });
  outputs.append(outBody);
  const params = h("section.panel", { "aria-labelledby": "params-h" }, h("h2", { id: "params-h" }, "Parameters"));
  let job = null;
  let canceling = false;

  main.append(
    h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/jobs" }, "← Jobs")),
    h("section.panel", { "aria-labelledby": "job-h" },
      h("div.page-head", {}, h("h1", { id: "job-h" }, "Job ", h("code", {}, id)), actions),
      meta, progress.root, msg.root),
    h("section.panel", { "aria-labelledby": "timeline-h" }, h("h2", { id: "timeline-h" }, "Timeline"), timeline),
    errorBox, outputs, params);

  function show(next) {
    const statusChanged = !job || job.status !== next.status;
    const first = !job;
    job = next;
    progress.update(job);
    renderTimeline();
    if (statusChanged) {
      clear(meta).append(statusBadge(job.status), " ", KIND_LABEL[job.kind] || job.kind,
        job.model_profile ? ` · model profile ${job.model_profile}` : "",
        job.attempt > 1 ? ` · attempt ${job.attempt}` : "");
      renderActions();
      renderError();
      renderOutputs();
    }
    if (first) renderParams();
  }

  function renderActions() {
    clear(actions);
    if (FINAL.has(job.status)) return;
    const btn = h("button.danger", { type: "button", disabled: canceling, onclick: async () => {
      canceling = true;
      btn.disabled = true;
      btn.textContent = "Canceling…";
      try {
        show(await cancelJob(id));
      } catch (err) {
        canceling = false;
        btn.disabled = false;
        btn.textContent = "Cancel job";
        msg.show(`Could not cancel: ${err.describe ? err.describe() : err.message}`);
      }
    } }, canceling ? "Canceling…" : "Cancel job");
    actions.append(btn);
  }

  function renderTimeline() {
    const created = Date.parse(job.created_at);
    const started = job.started_at ? Date.parse(job.started_at) : null;
    const finished = job.finished_at ? Date.parse(job.finished_at) : null;
    const now = Date.now();
    const end = finished ?? now;
    const waited = (started ?? (finished ?? now)) - created;
    const ran = started ? end - started : 0;
    const total = Math.max(1, waited + ran);
    const endLabel = { succeeded: "Succeeded", failed: "Failed", canceled: "Canceled" }[job.status] || "Finished";
    const step = (label, iso, note, state) => h(`li.${state}`, {},
      h("span.dot", { "aria-hidden": "true" }), h("span.t-label", {}, label),
      iso ? timeEl(iso) : h("span.pending", {}, "—"), note ? h("span.t-note", {}, note) : null);
    const list = h("ol.timeline", {},
      step("Created", job.created_at, null, "done"),
      step("Started", job.started_at, started ? `waited ${fmtDuration(waited)} in the queue` : (finished ? "never ran" : null),
        started ? "done" : "todo"),
      step(endLabel, job.finished_at, finished && started ? `ran ${fmtDuration(ran)}` : null,
        finished ? `done end-${job.status}` : "todo"));
    const bar = h("div.tl-bar", { "aria-hidden": "true" },
      h("span.tl-queued", { style: { width: `${(100 * waited) / total}%` } }),
      h("span.tl-running", { style: { width: `${(100 * ran) / total}%` }, dataset: { status: job.status } }));
    const summary = h("p.small", {}, finished ? `Total ${fmtDuration(finished - created)}` : `Elapsed ${fmtDuration(now - created)}`);
    timeline.replaceChildren(list, bar, summary);
  }

  function renderError() {
    clear(errorBox);
    errorBox.hidden = !job.error;
    if (!job.error) return;
    errorBox.append(h("h2", { id: "error-h" }, "Error"),
      h("p", {}, h("code", {}, job.error.code), " ", job.error.message));
  }

  let outputsRun = 0;
  async function renderOutputs() {
    const run = ++outputsRun;
    clear(outBody);
    const r = job.result;
    if (!FINAL.has(job.status)) {
      outBody.append(h("p.empty-note", {}, "Outputs appear here when the job succeeds."));
      return;
    }
    if (!r) {
      outBody.append(h("p.empty-note", {}, job.status === "succeeded" ? "This job has no outputs." : "No outputs."));
      return;
    }
    const p = job.params || {};
    if (job.kind === "colorize") {
      const input = await inputUrl(p.image);
      if (run !== outputsRun) return;
      const row = h("div.figures");
      if (input) row.append(figure(input, "Input", { alt: `Input photo ${p.image}` }));
      r.images.forEach((im, i) => row.append(figure(im.url, `Result ${i + 1} · ${im.width}×${im.height}`,
        { alt: `Colorized result ${i + 1}`, href: im.url, download: im.url })));
      outBody.append(row);
      if (input && r.images.length) {
        outBody.append(h("h3", {}, "Before / after"), compareView(input, r.images[0].url, r.images[0]));
      } else if (!input) {
        outBody.append(h("p.small.note", {}, "The input is shown only for photos submitted from this browser: "
          + "the API does not serve uploads back."));
      }
      outBody.append(h("p.small", {}, `seed ${r.seed}`));
    } else if (job.kind === "anomaly.score") {
      const row = h("div.figures.anomaly-figures");
      const inputs = await Promise.all(r.items.map((it) => inputUrl(it.image)));
      const names = new Map(await Promise.all(r.items.map(async (it) => [it.image, await inputName(it.image)])));
      if (run !== outputsRun) return;
      r.items.forEach((it, i) => row.append(anomalyView(it, i, inputs[i])));
      outBody.append(scoreTable(r.items, (id) => names.get(id)), h("p.small", {}, "Heat map: blue = normal, green = the threshold, red = most "
        + "anomalous. Outlined boxes are the regions above the threshold."), row);
    } else if (job.kind === "anomaly.fit") {
      outBody.append(dl([["Model", h("a.model-link", { href: `#/models/${r.model_id}` }, h("code", {}, r.model_id))],
        ...Object.entries(r.test_metrics || {}).filter(([, v]) => typeof v === "number" && !Number.isInteger(v))
          .map(([k, v]) => [`test ${k.replace(/_/g, " ")}`, fmtNum(v)]),
        ...Object.entries(r.counts || {}).map(([k, v]) => [`${k} images`, String(v)]),
        ...Object.entries(r.thresholds || {}).map(([k, v]) => [k, typeof v === "number" ? fmtNum(v) : String(v)])]));
    } else if (job.kind === "video.generate") {
      outBody.append(h("div.figures", {}, videoView(r.video, `${r.segments} segments, seed ${r.seed}`, r.thumbnail_url)));
      const metrics = Object.entries(r.metrics || {});
      if (metrics.length) outBody.append(dl(metrics.map(([k, v]) => [k, fmtNum(v)])));
    } else if (job.kind === "video.edit") {
      const row = h("div.figures");
      r.videos.forEach((v) => row.append(videoView(v, v.prompt)));
      outBody.append(row, dl([["Tuned model", h("a", { href: "#/models" }, h("code", {}, r.tuned_model_id))],
        ["Tuning", `${r.tuning}${r.tuning === "ran" ? ` (${fmtDuration(r.tune_seconds * 1000)})` : ""}`], ["Seed", String(r.seed)]]));
    } else if (job.kind === "subject.generate" || job.kind === "subject.tune") {
      const inputs = await Promise.all((p.subject_images || []).map((u) => inputUrl(u)));
      if (run !== outputsRun) return;
      const shown = inputs.map((url, i) => url && figure(url, `Subject photo ${i + 1}`, { alt: `Subject photo ${p.subject_images[i]}` }))
        .filter(Boolean);
      if (shown.length) outBody.append(h("div.figures.thumbs", {}, ...shown));
      outBody.append(subjectResult(job));
    } else {
      outBody.append(h("pre.json", {}, JSON.stringify(r, null, 2)));
    }
  }

  function renderParams() {
    const p = job.params || {};
    const entries = Object.entries(p).map(([k, v]) => {
      if (k === "strokes" && Array.isArray(v)) {
        const points = v.reduce((n, s) => n + (s.points?.length || 0), 0);
        return [k, h("div", {}, h("span", { dataset: { strokes: String(v.length) } }, `${v.length} strokes, ${points} points `),
          ...v.map((s) => h("span.swatch", { style: { background: s.color }, title: `${s.color}, width ${s.width}` })),
          v.length ? h("details", {}, h("summary", {}, "Stroke JSON"), h("pre.json", {}, JSON.stringify(v))) : null)];
      }
      if (v === null || v === undefined) return [k, h("span.muted", {}, "—")];
      if (typeof v === "object") {
        const compact = JSON.stringify(v);
        return [k, compact.length <= 90 ? h("code.inline-json", {}, compact) : h("pre.json", {}, JSON.stringify(v, null, 2))];
      }
      if (typeof v === "string" && /^(upl|anm|tvm|sbm|job)_/.test(v)) return [k, h("code", {}, v)];
      return [k, String(v)];
    });
    params.append(entries.length ? dl(entries) : h("p.empty-note", {}, "No parameters."));
    params.append(h("p.small", {}, `Created ${fmtTime(job.created_at)}`));
  }

  getJob(id, { signal: ctrl.signal })
    .then((j) => {
      show(j);
      if (!FINAL.has(j.status)) {
        return streamJob(id, show, { signal: ctrl.signal }).then((final) => final && show(final));
      }
      return null;
    })
    .catch((err) => {
      if (ctrl.signal.aborted) return;
      if (err instanceof ApiError && err.status === 404) {
        main.replaceChildren(h("section.panel", {}, h("h1", {}, "No such job"),
          h("p", {}, "No job ", h("code", {}, id), " for this API key. ", h("a", { href: "#/jobs" }, "Back to the jobs"))));
      } else {
        msg.show(`Could not load the job: ${err.describe ? err.describe() : err.message}`);
      }
    });

  return () => ctrl.abort();
}

function dl(pairs) {
  return h("dl.kv", {}, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}
