// One anomaly model (#/models/{id}): what it is, its held-out test metrics and, for a trained
// model, the training's per-epoch history. A minimal page; the full console comes later.
import { api, ApiError } from "./api.js";
import { clear, fmtTime, h, messageBox } from "./ui.js";
import { fmtNum } from "./views.js";

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
    h("nav.crumbs", { "aria-label": "Breadcrumb" }, h("a", { href: "#/jobs" }, "← Jobs")),
    h("section.panel", { "aria-labelledby": "model-h" }, h("h1", { id: "model-h" }, "Anomaly model ", h("code", {}, id)),
      msg.root, body));

  api(`/v1/anomaly-models/${encodeURIComponent(id)}`, { signal: ctrl.signal }).then((m) => {
    clear(body);
    const t = m.training;
    body.append(dl([["Name", m.name], ["Model", MODEL_LABEL[m.model] || m.model], ["Backbone", m.backbone],
      ["Image size", `${m.image_size} px`], ["Made by", h("a", { href: `#/jobs/${m.job_id}` }, h("code", {}, m.job_id))],
      ["Created", fmtTime(m.created_at)],
      ...Object.entries(m.thresholds || {}).map(([k, v]) => [`threshold ${k}`, typeof v === "number" ? fmtNum(v) : String(v)]),
      ...Object.entries(m.counts || {}).map(([k, v]) => [`${k.replace(/_/g, " ")} images`, String(v)])]));
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
  }).catch((err) => {
    if (ctrl.signal.aborted) return;
    if (err instanceof ApiError && err.status === 404) body.append(h("p", {}, "No such model for this API key."));
    else msg.show(`Could not load the model: ${err.describe ? err.describe() : err.message}`);
  });
  return () => ctrl.abort();
}
