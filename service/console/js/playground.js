// Colorization playground: a photo, colour strokes painted over it, an optional prompt and
// exemplar; submit, watch the progress, compare before and after.
//
// The canvas has the photo's natural size (its CSS size follows the layout), so stroke points
// are recorded in input-image pixels: pointer positions are scaled by natural / displayed size.
// At submit they are scaled once more by the upload's own width / the canvas width (1 unless
// the browser and the service disagree about the image's size), as the API wants them.
import { api, FINAL, streamJob, uploadFile } from "./api.js";
import { rememberInput } from "./inputs.js";
import { h, messageBox, progressView } from "./ui.js";
import { compareView, figure } from "./views.js";

const MAX_POINTS_PER_STROKE = 4096;
const MAX_POINTS = 20000;
const MAX_STROKES = 256;
const PRESETS = [
  ["Red", "#d9482b"], ["Orange", "#f08c2e"], ["Yellow", "#f2c94c"], ["Green", "#3f9a4a"],
  ["Teal", "#2a9d8f"], ["Blue", "#2f6fd6"], ["Purple", "#7b4bb7"], ["Skin", "#e0ac8a"], ["Brown", "#7a4a2a"],
];

export function renderPlayground(main) {
  document.title = "Colorize playground · visionjobs";
  const ctrl = new AbortController();
  const msg = messageBox();
  const progress = progressView("Colorization progress");
  const strokes = [];
  let drawing = null;
  let photo = null; // {file, url, width, height, uploadId}
  let exemplarUpload = null; // {file, id}

  // ---- brush tools
  const color = h("input", { id: "brush-color", type: "color", value: PRESETS[0][1] });
  const width = h("input", { id: "brush-width", type: "range", min: "1", max: "64", value: "8", step: "1" });
  const widthOut = h("output", { for: "brush-width", id: "brush-width-out" }, "8 px");
  const presetButtons = PRESETS.map(([name, hex]) => h("button.swatch-btn", {
    type: "button", title: `${name} ${hex}`, "aria-label": `Brush colour ${name}`, style: { background: hex },
    onclick: () => { color.value = hex; syncPresets(); },
  }));
  const undo = h("button.secondary", { type: "button", id: "undo", disabled: true, onclick: () => undoStroke() }, "Undo");
  const clearBtn = h("button.secondary", { type: "button", id: "clear-strokes", disabled: true, onclick: () => {
    strokes.length = 0;
    redraw();
  } }, "Clear");
  const strokeInfo = h("p.small.stroke-info", { "aria-live": "polite" }, "\u00a0");

  function syncPresets() {
    presetButtons.forEach((b, i) => b.setAttribute("aria-pressed", String(PRESETS[i][1] === color.value.toLowerCase())));
  }
  color.addEventListener("input", syncPresets);
  width.addEventListener("input", () => { widthOut.textContent = `${width.value} px`; });
  syncPresets();

  // ---- the stage: photo + stroke canvas
  const img = h("img.photo", { alt: "", draggable: "false" });
  const canvas = h("canvas.strokes", { role: "img", "aria-label": "Stroke canvas: drag with the mouse, pen or finger to paint colour hints over the photo" });
  // a mouse shortcut to the (labelled, focusable) file input; photos can also be dropped here
  const placeholder = h("div.stage-empty", { "aria-hidden": "true", onclick: () => photoInput.click() },
    h("strong", {}, "Choose or drop a photo to start"), h("span.small", {}, "PNG, JPEG, WebP; grayscale or colour"));
  const stage = h("div.stage", { dataset: { empty: "true" } }, placeholder, img, canvas);
  const ctx = canvas.getContext("2d");

  // ---- form
  const photoInput = h("input", { id: "photo", type: "file", accept: "image/png,image/jpeg,image/webp,image/bmp,image/tiff,image/gif", required: true });
  const prompt = h("input", { id: "prompt", type: "text", maxLength: 1000, placeholder: "e.g. a red vintage car under a blue sky", autocomplete: "off" });
  const exemplar = h("input", { id: "exemplar", type: "file", accept: "image/png,image/jpeg,image/webp" });
  const steps = h("input", { id: "steps", type: "number", min: "1", max: "100", value: "20", inputMode: "numeric" });
  const seed = h("input", { id: "seed", type: "number", min: "0", max: "4294967295", placeholder: "random", inputMode: "numeric" });
  const outputsN = h("input", { id: "num-outputs", type: "number", min: "1", max: "4", value: "1", inputMode: "numeric" });
  const submit = h("button.primary", { type: "submit", id: "submit" }, "Colorize");
  const jobLine = h("p.small.job-line", {}, "\u00a0");
  const result = h("section.panel.result", { hidden: true, "aria-labelledby": "result-h" });

  const form = h("form.side", { id: "colorize-form", novalidate: true, onsubmit: (ev) => { ev.preventDefault(); run(); } },
    field("photo", "Photo", photoInput),
    field("prompt", "Prompt (optional)", prompt),
    field("exemplar", "Colour exemplar (optional)", exemplar, "An image whose colours guide the result."),
    h("details.advanced", {}, h("summary", {}, "Advanced"),
      h("div.grid3", {}, field("steps", "Steps", steps), field("seed", "Seed", seed), field("num-outputs", "Outputs", outputsN))),
    h("div.submit-row", {}, submit),
    h("div.run-status", {}, progress.root, jobLine),
    msg.root);

  main.append(
    h("section.panel", { "aria-labelledby": "pg-h" },
      h("div.page-head", {}, h("h1", { id: "pg-h" }, "Colorize playground")),
      h("p.lead", {}, "Upload a photo, paint colour hints where you want them, add a prompt if you like, and submit."),
      h("div.playground", {},
        h("div.editor", {},
          h("div.toolbar.brush", { role: "group", "aria-label": "Brush" },
            h("label", { for: "brush-color" }, "Colour"), color,
            h("span.presets", { role: "group", "aria-label": "Preset colours" }, ...presetButtons),
            h("label", { for: "brush-width" }, "Width"), width, widthOut,
            undo, clearBtn),
          stage, strokeInfo),
        form)),
    result);

  function field(id, label, control, hint) {
    const hintId = hint ? `${id}-hint` : undefined;
    if (hintId) control.setAttribute("aria-describedby", hintId);
    return h("div.field", {}, h("label", { for: id }, label), control, hint ? h("span.hint", { id: hintId }, hint) : null);
  }

  // ---- photo loading
  photoInput.addEventListener("change", () => {
    const file = photoInput.files[0];
    if (!file) return;
    const url = URL.createObjectURL(file);
    const probe = new Image();
    probe.onload = () => {
      if (photo?.url) URL.revokeObjectURL(photo.url);
      photo = { file, url, width: probe.naturalWidth, height: probe.naturalHeight, uploadId: null };
      img.src = url;
      img.alt = `Photo ${file.name}, ${photo.width}×${photo.height}`;
      canvas.width = photo.width;
      canvas.height = photo.height;
      stage.style.aspectRatio = `${photo.width} / ${photo.height}`;
      stage.style.width = `min(100%, calc(68vh * ${photo.width / photo.height}))`;
      stage.dataset.empty = "false";
      const short = Math.min(photo.width, photo.height);
      width.max = String(Math.max(16, Math.min(256, Math.round(short / 4))));
      width.value = String(Math.max(1, Math.min(64, Math.round(short / 24))));
      widthOut.textContent = `${width.value} px`;
      strokes.length = 0;
      redraw();
      result.hidden = true;
      msg.show("");
    };
    probe.onerror = () => {
      URL.revokeObjectURL(url);
      msg.show("This file is not an image the browser can show.");
    };
    probe.src = url;
  });
  exemplar.addEventListener("change", () => { exemplarUpload = null; });
  stage.addEventListener("dragover", (ev) => { ev.preventDefault(); stage.dataset.drop = "true"; });
  stage.addEventListener("dragleave", () => { delete stage.dataset.drop; });
  stage.addEventListener("drop", (ev) => {
    ev.preventDefault();
    delete stage.dataset.drop;
    if (!ev.dataTransfer?.files?.length) return;
    photoInput.files = ev.dataTransfer.files;
    photoInput.dispatchEvent(new Event("change"));
  });

  // ---- drawing
  function toImage(ev) {
    const r = canvas.getBoundingClientRect();
    const x = ((ev.clientX - r.left) * canvas.width) / r.width;
    const y = ((ev.clientY - r.top) * canvas.height) / r.height;
    const clamp = (v, hi) => Math.round(Math.max(0, Math.min(hi, v)) * 100) / 100;
    return [clamp(x, canvas.width), clamp(y, canvas.height)];
  }

  function totalPoints() {
    return strokes.reduce((n, s) => n + s.points.length, 0);
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (!photo || ev.button !== 0) return;
    if (strokes.length >= MAX_STROKES) return msg.show(`At most ${MAX_STROKES} strokes per job.`);
    if (totalPoints() >= MAX_POINTS) return msg.show(`At most ${MAX_POINTS} stroke points per job.`);
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    drawing = { color: color.value.toLowerCase(), width: Number(width.value), points: [toImage(ev)] };
    strokes.push(drawing);
    redraw();
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!drawing) return;
    const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
    for (const e of events.length ? events : [ev]) {
      const p = toImage(e);
      const last = drawing.points[drawing.points.length - 1];
      if (Math.hypot(p[0] - last[0], p[1] - last[1]) < 0.5) continue;
      if (drawing.points.length >= MAX_POINTS_PER_STROKE || totalPoints() >= MAX_POINTS) break;
      drawing.points.push(p);
    }
    redraw();
  });
  const end = () => {
    if (!drawing) return;
    drawing = null;
    redraw();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("lostpointercapture", end);

  function undoStroke() {
    strokes.pop();
    redraw();
  }
  const onKey = (ev) => {
    const typing = ev.target instanceof HTMLTextAreaElement
      || (ev.target instanceof HTMLInputElement && ["text", "number", "search"].includes(ev.target.type));
    if ((ev.ctrlKey || ev.metaKey) && ev.key.toLowerCase() === "z" && !ev.shiftKey && !typing && strokes.length) {
      ev.preventDefault();
      undoStroke();
    }
  };
  document.addEventListener("keydown", onKey);

  function redraw() {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    for (const s of strokes) {
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.lineWidth = s.width;
      if (s.points.length === 1) {
        ctx.beginPath();
        ctx.arc(s.points[0][0], s.points[0][1], s.width / 2, 0, 2 * Math.PI);
        ctx.fill();
        continue;
      }
      ctx.beginPath();
      ctx.moveTo(...s.points[0]);
      for (const p of s.points.slice(1)) ctx.lineTo(...p);
      ctx.stroke();
    }
    undo.disabled = clearBtn.disabled = strokes.length === 0;
    stage.dataset.strokes = String(strokes.length);
    strokeInfo.textContent = photo
      ? `${strokes.length} ${strokes.length === 1 ? "stroke" : "strokes"} · ${photo.width}×${photo.height} px photo`
      : "\u00a0";
  }

  // ---- submit and follow
  async function run() {
    msg.show("");
    if (!photo) {
      msg.show("Choose a photo first.");
      photoInput.focus();
      return;
    }
    const n = (el, lo, hi) => {
      if (el.value === "") return null;
      const v = Number(el.value);
      if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`${el.labels?.[0]?.textContent || el.id} must be a whole number from ${lo} to ${hi}`);
      return v;
    };
    let body;
    try {
      body = { steps: n(steps, 1, 100) ?? 20, num_outputs: n(outputsN, 1, 4) ?? 1 };
      const s = n(seed, 0, 4294967295);
      if (s !== null) body.seed = s;
    } catch (err) {
      msg.show(err.message);
      return;
    }
    submit.disabled = true;
    submit.textContent = "Submitting…";
    result.hidden = true;
    progress.update({ status: "queued", progress: 0, stage: "uploading" });
    jobLine.textContent = "\u00a0";
    try {
      if (!photo.uploadId) {
        const up = await uploadFile(photo.file, { signal: ctrl.signal });
        photo.uploadId = up.id;
        photo.upload = up;
        await rememberInput(up.id, photo.file);
      }
      if (exemplar.files[0] && exemplarUpload?.file !== exemplar.files[0]) {
        const up = await uploadFile(exemplar.files[0], { signal: ctrl.signal });
        exemplarUpload = { file: exemplar.files[0], id: up.id };
        await rememberInput(up.id, exemplar.files[0]);
      }
      const sx = (photo.upload?.width || canvas.width) / canvas.width;
      const sy = (photo.upload?.height || canvas.height) / canvas.height;
      body.image = photo.uploadId;
      body.strokes = strokes.map((s) => ({
        color: s.color,
        width: Math.max(0.5, Math.round(s.width * sx * 100) / 100),
        points: s.points.map(([x, y]) => [Math.round(x * sx * 100) / 100, Math.round(y * sy * 100) / 100]),
      }));
      if (prompt.value.trim()) body.prompt = prompt.value.trim();
      if (exemplar.files[0] && exemplarUpload) body.exemplar = exemplarUpload.id;
      const job = await api("/v1/colorizations", { method: "POST", json: body, signal: ctrl.signal });
      submit.textContent = "Running…";
      jobLine.replaceChildren("Job ", h("a", { href: `#/jobs/${job.id}`, dataset: { jobId: job.id } }, job.id));
      progress.update(job);
      const final = FINAL.has(job.status) ? job : await streamJob(job.id, (j) => progress.update(j), { signal: ctrl.signal });
      progress.update(final);
      showResult(final);
    } catch (err) {
      if (ctrl.signal.aborted) return;
      progress.update({ status: "failed", progress: 0, stage: "not submitted" });
      msg.show(err.describe ? err.describe() : err.message);
    } finally {
      if (!ctrl.signal.aborted) {
        submit.disabled = false;
        submit.textContent = "Colorize";
      }
    }
  }

  function showResult(job) {
    if (job.status !== "succeeded") {
      msg.show(job.error ? `${job.status}: ${job.error.message} (${job.error.code})` : `The job was ${job.status}.`);
      return;
    }
    const images = job.result.images;
    result.replaceChildren(
      h("h2", { id: "result-h" }, "Before / after"),
      h("div.result-grid", {},
        compareView(photo.url, images[0].url, images[0]),
        h("div", {},
          h("div.figures.thumbs", {}, figure(photo.url, "Input", { alt: "Input photo" }),
            ...images.map((im, i) => figure(im.url, `Result ${i + 1} · seed ${job.result.seed}`,
              { alt: `Colorized result ${i + 1}`, href: im.url, download: im.url }))),
          h("p.small", {}, h("a", { href: `#/jobs/${job.id}` }, "Open the job page"),
            job.model_profile ? ` · ${job.model_profile} model profile` : ""))));
    result.hidden = false;
  }

  return () => {
    ctrl.abort();
    document.removeEventListener("keydown", onKey);
  };
}
