// Anomaly playground (#/anomaly): fit a model on a folder dataset (a folder, a ZIP, or loose
// images of normal parts), then score images against a chosen model.
//
// A folder is read as the ZIP would be: normal/ (or good/), abnormal/ and mask/ subfolders, or
// every image normal when it has none of them; a mask pairs with the abnormal image of the same
// name (with or without a _mask suffix).
import { api } from "./api.js";
import { field, numInput, putNumbers, runStatus, submitJob, uploader } from "./form.js";
import { h, messageBox, progressView } from "./ui.js";
import { anomalyView, fmtNum, scoreTable } from "./views.js";

const IMAGE_RE = /\.(png|jpe?g|webp|bmp|tiff?)$/i;
const IMAGE_TYPES = "image/png,image/jpeg,image/webp,image/bmp,image/tiff";

/** {normal, abnormal, masks} Files of a picked folder (masks: one per abnormal image or null). */
export function folderDataset(files) {
  const parts = (f) => (f.webkitRelativePath || f.name).split("/").slice(1); // below the picked folder
  const images = [...files].filter((f) => IMAGE_RE.test(f.name));
  const inFolder = (names) => images.filter((f) => { const p = parts(f); return p.length > 1 && names.includes(p[0].toLowerCase()); });
  const hasFolders = images.some((f) => parts(f).length > 1 && ["normal", "good", "abnormal"].includes(parts(f)[0].toLowerCase()));
  if (!hasFolders) return { normal: images, abnormal: [], masks: [] };
  const stem = (f) => f.name.replace(/\.[^.]+$/, "").replace(/_mask$/, "");
  const maskFiles = new Map(inFolder(["mask", "masks", "ground_truth"]).map((f) => [stem(f), f]));
  const abnormal = inFolder(["abnormal"]);
  return { normal: inFolder(["normal", "good"]), abnormal, masks: abnormal.map((f) => maskFiles.get(stem(f)) || null) };
}

export function renderAnomaly(main) {
  document.title = "Anomaly playground · visionjobs";
  const ctrl = new AbortController();
  const upload = uploader(ctrl.signal);
  const names = new Map(); // upload id -> the file name it came from
  const score = scorePanel(ctrl.signal, upload, names);
  main.append(fitPanel(ctrl.signal, upload, (id) => score.loadModels(id)), score.root);
  return () => ctrl.abort();
}

function fitPanel(signal, upload, onModel) {
  const msg = messageBox();
  const progress = progressView("Anomaly fit progress");
  const jobLine = h("p.small.job-line", {}, "\u00a0");
  const name = h("input", { id: "fit-name", type: "text", maxLength: 200, placeholder: "e.g. bottles", autocomplete: "off" });
  const model = h("select", { id: "fit-model" }, h("option", { value: "patchcore" }, "PatchCore (fitted in one pass)"),
    h("option", { value: "reverse_distillation" }, "Reverse Distillation (trained)"));
  const sources = [["folder", "A folder"], ["zip", "A ZIP"], ["images", "Images"]];
  const radios = sources.map(([value, label], i) => h("label.check", { for: `fit-source-${value}` },
    h("input", { id: `fit-source-${value}`, type: "radio", name: "fit-source", value, checked: i === 0 }), ` ${label}`));
  const folder = h("input", { id: "fit-folder", type: "file", webkitdirectory: true, multiple: true });
  const zip = h("input", { id: "fit-zip", type: "file", accept: ".zip,application/zip" });
  const images = h("input", { id: "fit-images", type: "file", multiple: true, accept: IMAGE_TYPES });
  const summary = h("p.small.dataset-summary", { "aria-live": "polite" }, "\u00a0");
  const backbone = h("select", { id: "fit-backbone" }, h("option", { value: "" }, "default"),
    ...["wide_resnet50_2", "resnet18", "tiny"].map((b) => h("option", { value: b }, b)));
  const imageSize = numInput("fit-image-size", 64, 1024, "", { step: "32", placeholder: "256" });
  const seed = numInput("fit-seed", 0, 4294967295, "", { placeholder: "random" });
  const coreset = numInput("fit-coreset", 0.001, 1, "", { step: "any", placeholder: "0.1" });
  const epochs = numInput("fit-epochs", 1, 1000, "", { placeholder: "200" });
  const patience = numInput("fit-patience", 0, 100, "", { placeholder: "3" });
  const batch = numInput("fit-batch", 1, 64, "", { placeholder: "16" });
  const submit = h("button.primary", { type: "submit", id: "fit-submit" }, "Fit model");
  const result = h("div.result", { hidden: true, id: "fit-result" });
  const pickers = { folder: field("fit-folder", "Dataset folder", folder, "normal/ (or good/), abnormal/, mask/; or only normal images."),
    zip: field("fit-zip", "Dataset ZIP", zip, "The same folders in a ZIP, or a flat ZIP of normal images."),
    images: field("fit-images", "Normal images", images, "Images of good parts only.") };
  const patchcore = h("div.grid3", {}, field("fit-coreset", "Coreset ratio", coreset));
  const training = h("div.grid3", {}, field("fit-epochs", "Max epochs", epochs), field("fit-patience", "Patience", patience),
    field("fit-batch", "Batch size", batch));

  const source = () => radios.map((l) => l.querySelector("input")).find((r) => r.checked).value;
  function sync() {
    for (const [key, el] of Object.entries(pickers)) el.hidden = key !== source();
    patchcore.hidden = model.value !== "patchcore";
    training.hidden = model.value === "patchcore";
    const s = source();
    if (s === "folder" && folder.files.length) {
      const d = folderDataset(folder.files);
      summary.textContent = `${d.normal.length} normal, ${d.abnormal.length} abnormal, ${d.masks.filter(Boolean).length} masks`;
    } else if (s === "images" && images.files.length) summary.textContent = `${images.files.length} normal images`;
    else summary.textContent = s === "zip" && zip.files[0] ? zip.files[0].name : "\u00a0";
  }
  [model, folder, zip, images, ...radios.map((l) => l.querySelector("input"))].forEach((el) => el.addEventListener("change", sync));

  const form = h("form.side", { id: "anomaly-fit-form", novalidate: true, onsubmit: (ev) => { ev.preventDefault(); run(); } },
    field("fit-name", "Name", name),
    field("fit-model", "Model", model),
    h("fieldset.plain", {}, h("legend", {}, "Dataset"), h("div.radios", {}, ...radios), ...Object.values(pickers), summary),
    h("details.advanced", {}, h("summary", {}, "Advanced"),
      h("div.grid3", {}, field("fit-backbone", "Backbone", backbone), field("fit-image-size", "Image size", imageSize),
        field("fit-seed", "Seed", seed)), patchcore, training),
    h("div.submit-row", {}, submit), ...runStatus(progress, jobLine, msg));
  sync();

  async function run() {
    const final = await submitJob({ button: submit, progress, jobLine, msg, signal }, async () => {
      if (!name.value.trim()) throw new Error("Name the model.");
      const body = putNumbers({ name: name.value.trim(), model: model.value }, [["image_size", imageSize, 64, 1024],
        ["seed", seed, 0, 4294967295]]);
      if (backbone.value) body.backbone = backbone.value;
      if (model.value === "patchcore") putNumbers(body, [["coreset_ratio", coreset, 0.001, 1, { integer: false }]]);
      else putNumbers(body, [["max_epochs", epochs, 1, 1000], ["patience", patience, 0, 100], ["batch_size", batch, 1, 64]]);
      const ids = async (files) => { const out = []; for (const f of files) out.push((await upload(f)).id); return out; };
      const s = source();
      if (s === "zip") {
        if (!zip.files[0]) throw new Error("Choose a ZIP of the dataset.");
        body.archive = (await upload(zip.files[0])).id;
      } else {
        const d = s === "folder" ? folderDataset(folder.files) : { normal: [...images.files], abnormal: [], masks: [] };
        if (!d.normal.length) throw new Error(s === "folder" ? "The folder has no normal images." : "Choose normal images.");
        body.images = await ids(d.normal);
        if (d.abnormal.length) {
          body.abnormal = await ids(d.abnormal);
          if (d.masks.some(Boolean)) {
            body.abnormal_masks = [];
            for (const m of d.masks) body.abnormal_masks.push(m ? (await upload(m)).id : null);
          }
        }
      }
      return ["/v1/anomaly-models", body];
    });
    if (final?.status !== "succeeded") return;
    const r = final.result;
    const metrics = Object.entries(r.test_metrics || {}).filter(([, v]) => typeof v === "number" && !Number.isInteger(v));
    result.replaceChildren(h("h3", {}, "Model"),
      h("dl.kv", {}, h("dt", {}, "Model"), h("dd", {}, h("a.model-link", { href: `#/models/${r.model_id}` }, h("code", {}, r.model_id))),
        ...Object.entries(r.counts || {}).flatMap(([k, v]) => [h("dt", {}, `${k.replace(/_/g, " ")} images`), h("dd", {}, String(v))]),
        ...metrics.flatMap(([k, v]) => [h("dt", {}, `test ${k.replace(/_/g, " ")}`), h("dd", { dataset: { metric: k } }, fmtNum(v))])),
      h("p.small", {}, h("a", { href: `#/jobs/${final.id}` }, "Open the job page")));
    result.hidden = false;
    await onModel(r.model_id);
  }

  return h("section.panel", { "aria-labelledby": "fit-h" },
    h("div.page-head", {}, h("h1", { id: "fit-h" }, "Anomaly detection")),
    h("p.lead", {}, "Fit a model on images of good parts (and optionally defective ones), then score new images. ",
      h("a", { href: "#/models" }, "All models")),
    h("h2", {}, "Fit a model"), form, result);
}

function scorePanel(signal, upload, names) {
  const msg = messageBox();
  const progress = progressView("Anomaly scoring progress");
  const jobLine = h("p.small.job-line", {}, "\u00a0");
  const modelSel = h("select", { id: "score-model" });
  const images = h("input", { id: "score-images", type: "file", multiple: true, accept: IMAGE_TYPES });
  const submit = h("button.primary", { type: "submit", id: "score-submit" }, "Score images");
  const result = h("div.result", { hidden: true, id: "score-result" });
  const localUrls = new Map(); // upload id -> object URL of the picked file

  const form = h("form.side", { id: "anomaly-score-form", novalidate: true, onsubmit: (ev) => { ev.preventDefault(); run(); } },
    field("score-model", "Model", modelSel), field("score-images", "Images to score (1-64)", images),
    h("div.submit-row", {}, submit), ...runStatus(progress, jobLine, msg));

  async function run() {
    const final = await submitJob({ button: submit, progress, jobLine, msg, signal }, async () => {
      if (!modelSel.value) throw new Error("Fit a model first: there is none to score with.");
      if (!images.files.length) throw new Error("Choose the images to score.");
      const ids = [];
      for (const f of images.files) {
        const up = await upload(f);
        names.set(up.id, f.name);
        if (!localUrls.has(up.id)) localUrls.set(up.id, URL.createObjectURL(f));
        ids.push(up.id);
      }
      return ["/v1/anomaly-scores", { model_id: modelSel.value, images: ids }];
    });
    if (final?.status !== "succeeded") return;
    const items = final.result.items;
    result.replaceChildren(h("h3", {}, "Scores"), scoreTable(items, (id) => names.get(id)),
      h("div.figures.anomaly-figures", {}, ...items.map((it, i) => anomalyView(it, i, localUrls.get(it.image)))),
      h("p.small", {}, h("a", { href: `#/jobs/${final.id}` }, "Open the job page")));
    result.hidden = false;
  }

  async function loadModels(select) {
    try {
      const { items } = await api("/v1/anomaly-models", { signal });
      const current = select || modelSel.value;
      modelSel.replaceChildren(...(items.length ? items.map((m) => h("option", { value: m.id }, `${m.name} · ${m.id}`))
        : [h("option", { value: "" }, "No models yet: fit one above")]));
      if (items.some((m) => m.id === current)) modelSel.value = current;
    } catch (err) {
      if (!signal.aborted) msg.show(`Could not list the anomaly models: ${err.message}`);
    }
  }
  loadModels();

  return {
    root: h("section.panel", { "aria-labelledby": "score-h" }, h("h2", { id: "score-h" }, "Score images"), form, result),
    loadModels,
  };
}
