// One anomaly model (#/models/{id}): what it is, its thresholds (editable without refitting,
// over a histogram of the scores this key got from it), its held-out test metrics and, for a
// trained model, the training's per-epoch history.
import { api, ApiError } from "./api.js";
import { field, numValue } from "./form.js";
import { scoreHistogram } from "./histogram.js";
import { clear, fmtTime, h, messageBox } from "./ui.js";
import { fmtNum } from "./views.js";

const SCORE_PAGES = 5; // at most this many pages of 100 scoring jobs feed the histogram

const METRICS = [["image_auroc", "Image AUROC"], ["image_f1", "Image F1"], ["pixel_auroc", "Pixel AUROC"]];
const MODEL_LABEL = { patchcore: "PatchCore", reverse_distillation: "Reverse Distillation" };

const num = (x) => (x === null || x === undefined ? "—" : fmtNum(x));

function dl(pairs) {
  return h("dl.kv", {}, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function historyTable(training) {
  const cols = [["epoch", "Epoch"], ["train_loss", "Train loss"], ["val_loss", "Val loss"],
    ["image_auroc", "Val image AUROC"], ["image_f1", "Val F1"]];
  return h("div.table-wrap", {}, h("table.jobs.history", {},
    h("caption.sr-only", {}, "Training history, one row per epoch"),
    h("thead", {}, h("tr", {}, ...cols.map(([, label]) => h("th", { scope: "col" }, label)), h("th", { scope: "col" }, ""))),
    h("tbody", {}, ...training.history.map((row) => h("tr", { dataset: { epoch: String(row.epoch) } },
      ...cols.map(([k]) => (k === "epoch" ? h("th", { scope: "row" }, String(row.epoch)) : h("td", {}, num(row[k])))),
      h("td", {}, row.epoch === training.best_epoch ? "best" : row.early_stop ? "early stop" : ""))))));
}

export function renderModel(main, id) {
  document.title = `${id} · visionjobs`;
  const ctrl = new AbortController();
  const msg = messageBox();
  const body = h("div.model-body");
  main.append(
    h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/models" }, "← Models")),
    h("section.panel", { "aria-labelledby": "model-h" }, h("h1", { id: "model-h" }, "Anomaly model ", h("code", {}, id)),
      msg.root, body));

  api(`/v1/anomaly-models/${encodeURIComponent(id)}`, { signal: ctrl.signal }).then((m) => {
    clear(body);
    const t = m.training;
    body.append(dl([["Name", m.name], ["Model", MODEL_LABEL[m.model] || m.model], ["Backbone", m.backbone],
      ["Image size", `${m.image_size} px`], ["Made by", h("a", { href: `#/jobs/${m.job_id}` }, h("code", {}, m.job_id))],
      ["Created", fmtTime(m.created_at)], ["Updated", fmtTime(m.updated_at)],
      ...Object.entries(m.counts || {}).map(([k, v]) => [`${k.replace(/_/g, " ")} images`, String(v)])]));
    body.append(thresholdEditor(m, msg, ctrl.signal));
    const tm = m.test_metrics;
    body.append(h("h2", {}, "Test metrics"), tm
      ? h("div", {}, dl(METRICS.map(([k, label]) => [label, h("span", { dataset: { metric: k } }, num(tm[k]))])),
        h("p.small", {}, `On the held-out test split: ${tm.images} images, ${tm.normal} normal, ${tm.abnormal} abnormal.`))
      : h("p.empty-note", {}, "No held-out test split: the model was fitted on normal images only."));
    if (t) {
      body.append(h("h2", {}, "Training"), dl([["Epochs run", String(t.epochs_run ?? t.epoch)],
        ["Best epoch", `${t.best_epoch} (${t.monitor} ${num(t.best_value)})`],
        ["Stopped early", t.stopped_early ? "yes" : "no"],
        ["Attempts", t.resumed_from_epoch ? `${t.attempt}, resumed after epoch ${t.resumed_from_epoch}` : String(t.attempt)]]),
      historyTable(t));
    }
    body.append(h("div.submit-row", {}, h("button.danger", { type: "button", id: "model-delete", onclick: async () => {
      try {
        await api(`/v1/anomaly-models/${encodeURIComponent(id)}`, { method: "DELETE" });
        location.hash = "#/models";
      } catch (err) {
        msg.show(`Could not delete: ${err.describe ? err.describe() : err.message}`);
      }
    } }, "Delete this model")));
  }).catch((err) => {
    if (ctrl.signal.aborted) return;
    if (err instanceof ApiError && err.status === 404) body.append(h("p", {}, "No such model for this API key."));
    else msg.show(`Could not load the model: ${err.describe ? err.describe() : err.message}`);
  });
  return () => ctrl.abort();
}

/** The raw image scores this key's scoring jobs got from model `id` (newest jobs first). */
async function scoresOf(id, signal) {
  const scores = [];
  let cursor = null;
  for (let i = 0; i < SCORE_PAGES; i += 1) {
    const q = new URLSearchParams({ kind: "anomaly.score", status: "succeeded", limit: "100" });
    if (cursor) q.set("cursor", cursor);
    const page = await api(`/v1/jobs?${q}`, { signal });
    for (const job of page.items) {
      if (job.params?.model_id === id) scores.push(...job.result.items.map((it) => it.score));
    }
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return scores;
}

function thresholdEditor(m, msg, signal) {
  const t = m.thresholds || {};
  const image = h("input", { id: "threshold-image", type: "number", step: "any", value: t.image ?? "" });
  const pixel = h("input", { id: "threshold-pixel", type: "number", step: "any", value: t.pixel ?? "" });
  const methods = h("p.small.threshold-methods", {}, methodsText(t));
  const save = h("button.primary", { type: "submit", id: "threshold-save" }, "Save thresholds");
  const saved = h("span.small.saved", { role: "status" });
  const chart = h("div.histogram-wrap", {}, h("p.small", {}, "Loading the scores of this model…"));
  let histogram = null;
  image.addEventListener("input", () => histogram?.setThreshold(image.value === "" ? NaN : Number(image.value)));

  scoresOf(m.id, signal).then((scores) => {
    if (!scores.length) {
      chart.replaceChildren(h("p.empty-note", {}, "No images scored with this model yet: ",
        h("a", { href: "#/anomaly" }, "score some"), " to see their scores against the threshold."));
      return;
    }
    histogram = scoreHistogram(scores, Number(image.value));
    chart.replaceChildren(histogram.root, histogram.summary);
  }).catch((err) => {
    if (!signal.aborted) chart.replaceChildren(h("p.empty-note", {}, `Could not read the scores: ${err.message}`));
  });

  const form = h("form.thresholds", { id: "threshold-form", novalidate: true, onsubmit: async (ev) => {
    ev.preventDefault();
    msg.show("");
    saved.textContent = "";
    let patch;
    try {
      patch = {};
      const iv = numValue(image, -1e12, 1e12, { integer: false });
      const pv = numValue(pixel, -1e12, 1e12, { integer: false });
      if (iv !== null && iv !== t.image) patch.image_threshold = iv;
      if (pv !== null && pv !== t.pixel) patch.pixel_threshold = pv;
    } catch (err) {
      msg.show(err.message);
      return;
    }
    if (!Object.keys(patch).length) {
      saved.textContent = "Nothing changed.";
      return;
    }
    save.disabled = true;
    try {
      const updated = await api(`/v1/anomaly-models/${encodeURIComponent(m.id)}`, { method: "PATCH", json: patch, signal });
      Object.assign(t, updated.thresholds);
      methods.textContent = methodsText(t);
      saved.textContent = "Saved: the next scoring uses these thresholds (no refit).";
    } catch (err) {
      if (!signal.aborted) msg.show(`Could not save: ${err.describe ? err.describe() : err.message}`);
    } finally {
      save.disabled = false;
    }
  } },
  h("div.grid3", {}, field("threshold-image", "Image threshold (raw score)", image),
    field("threshold-pixel", "Pixel threshold (raw map)", pixel)),
  methods, h("div.submit-row", {}, save, saved));
  return h("section.threshold-editor", { "aria-labelledby": "thresholds-h" },
    h("h2", { id: "thresholds-h" }, "Thresholds"),
    h("p.small", {}, "An image scoring above the image threshold is anomalous; map pixels above the pixel threshold make "
      + "the mask and the boxes. Changing them needs no refit."),
    chart, form);
}

function methodsText(t) {
  return `image: ${t.image_method || "?"} · pixel: ${t.pixel_method || "?"}`;
}
