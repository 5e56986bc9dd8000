// Subject playground: 1-8 photos of one subject + a prompt -> new images of it. In-context
// (BLIP-Diffusion, no tuning) or expert (DreamBooth-LoRA: tuned in the job, or a subject model
// tuned earlier and reused without tuning). Also tunes subject models on their own and lists,
// and deletes, this key's subject models.
import { api, FINAL, streamJob, uploadFile } from "./api.js";
import { rememberInput } from "./inputs.js";
import { clear, h, messageBox, progressView } from "./ui.js";
import { figure, fmtNum } from "./views.js";

const MAX_PHOTOS = 8;
const METRICS = [["clip_i", "CLIP-I (vs the photos)"], ["clip_t", "CLIP-T (vs the prompt)"], ["dino", "DINO (vs the photos)"]];

export function renderSubject(main) {
  document.title = "Subject playground · visionjobs";
  const ctrl = new AbortController();
  const msg = messageBox();
  const progress = progressView("Subject job progress");
  const uploads = new Map(); // File -> upload id (a photo is uploaded once per page)

  const photos = h("input", { id: "subject-photos", type: "file", multiple: true, accept: "image/png,image/jpeg,image/webp" });
  const thumbs = h("div.figures.thumbs.subject-thumbs", { "aria-live": "polite" });
  const subjectClass = h("input", { id: "subject-class", type: "text", maxLength: 100, placeholder: "e.g. dog", autocomplete: "off" });
  const prompt = h("input", { id: "subject-prompt", type: "text", maxLength: 1000, placeholder: "e.g. swimming underwater", autocomplete: "off" });
  const methodIn = h("input", { id: "method-in-context", type: "radio", name: "method", value: "in_context", checked: true });
  const methodEx = h("input", { id: "method-expert", type: "radio", name: "method", value: "expert" });
  const modelSel = h("select", { id: "subject-model" }, h("option", { value: "" }, "Tune in this job"));
  const tuneSteps = num("tune-steps", 1, 10000, "400");
  const rank = num("rank", 1, 128, "4");
  const prior = h("input", { id: "prior", type: "checkbox" });
  const classImages = num("class-images", 1, 1000, "100");
  const negative = h("input", { id: "subject-negative", type: "text", maxLength: 1000, placeholder: "default per method", autocomplete: "off" });
  const steps = num("subject-steps", 1, 100, "50");
  const seed = num("subject-seed", 0, 4294967295, "");
  seed.placeholder = "random";
  const outputsN = num("subject-outputs", 1, 4, "1");
  const width = num("subject-width", 64, 1024, "");
  const height = num("subject-height", 64, 1024, "");
  width.placeholder = height.placeholder = "model's";
  const metricBoxes = METRICS.map(([value, label]) => h("label.check", {},
    h("input", { type: "checkbox", name: "metric", value }), ` ${label}`));
  const generate = h("button.primary", { type: "submit", id: "subject-generate" }, "Generate");
  const tuneOnly = h("button.secondary", { type: "button", id: "subject-tune", onclick: () => run("tune") }, "Tune a subject model");
  const jobLine = h("p.small.job-line", {}, "\u00a0");
  const result = h("section.panel.result", { hidden: true, "aria-labelledby": "subject-result-h" });
  const modelsList = h("div.subject-models", { "aria-live": "polite" });
  const expertBox = h("fieldset.expert", { hidden: true }, h("legend", {}, "Expert (DreamBooth-LoRA)"),
    field("subject-model", "Subject model", modelSel, "Reuse a tuning (no tuning in the job), or tune here."),
    h("div.tuning", {}, h("div.grid3", {}, field("tune-steps", "Tuning steps", tuneSteps), field("rank", "LoRA rank", rank),
      field("class-images", "Class images", classImages)),
    h("label.check", { for: "prior" }, prior, " Prior preservation (class images from the base model)")));

  const form = h("form.side.subject-form", { id: "subject-form", novalidate: true, onsubmit: (ev) => { ev.preventDefault(); run("generate"); } },
    field("subject-photos", "Subject photos (1-8)", photos, "A few photos of one subject, e.g. three views of your dog."), thumbs,
    field("subject-class", "Subject class", subjectClass, "What the subject is, in a word or two."),
    field("subject-prompt", "Prompt", prompt, "The scene, without the subject."),
    h("fieldset.method", {}, h("legend", {}, "Method"),
      h("label.check", { for: "method-in-context" }, methodIn, " In-context (BLIP-Diffusion, no tuning)"),
      h("label.check", { for: "method-expert" }, methodEx, " Expert (DreamBooth-LoRA)")),
    expertBox,
    h("details.advanced", {}, h("summary", {}, "Advanced"),
      field("subject-negative", "Negative prompt", negative),
      h("div.grid3", {}, field("subject-steps", "Steps", steps), field("subject-seed", "Seed", seed),
        field("subject-outputs", "Outputs", outputsN)),
      h("div.grid3", {}, field("subject-width", "Width", width), field("subject-height", "Height", height)),
      h("fieldset.metrics", {}, h("legend", {}, "DreamBench metrics"), ...metricBoxes)),
    h("div.submit-row", {}, generate, tuneOnly),
    h("div.run-status", {}, progress.root, jobLine),
    msg.root);

  main.append(
    h("section.panel", { "aria-labelledby": "subject-h" },
      h("div.page-head", {}, h("h1", { id: "subject-h" }, "Subject playground")),
      h("p.lead", {}, "A few photos of one subject and a prompt: new images of that subject in the prompt's scene."),
      form),
    result,
    h("section.panel", { "aria-labelledby": "models-h" }, h("h2", { id: "models-h" }, "Subject models"), modelsList));

  function num(id, lo, hi, value) {
    return h("input", { id, type: "number", min: String(lo), max: String(hi), value, inputMode: "numeric" });
  }

  function field(id, label, control, hint) {
    const hintId = hint ? `${id}-hint` : undefined;
    if (hintId) control.setAttribute("aria-describedby", hintId);
    return h("div.field", {}, h("label", { for: id }, label), control, hint ? h("span.hint", { id: hintId }, hint) : null);
  }

  const method = () => (methodEx.checked ? "expert" : "in_context");
  function syncMethod() {
    expertBox.hidden = method() !== "expert";
    const reuse = method() === "expert" && modelSel.value;
    expertBox.querySelector(".tuning").hidden = Boolean(reuse);
    subjectClass.disabled = Boolean(reuse);
    classImages.disabled = !prior.checked;
  }
  [methodIn, methodEx, modelSel, prior].forEach((el) => el.addEventListener("change", syncMethod));
  syncMethod();

  photos.addEventListener("change", () => {
    const files = [...photos.files];
    clear(thumbs);
    files.slice(0, MAX_PHOTOS).forEach((f, i) => thumbs.append(figure(URL.createObjectURL(f), `Photo ${i + 1}`, { alt: `Subject photo ${i + 1}, ${f.name}` })));
    msg.show(files.length > MAX_PHOTOS ? `At most ${MAX_PHOTOS} photos: the first ${MAX_PHOTOS} are used.` : "");
  });

  function value(el, lo, hi) {
    if (el.value === "") return null;
    const v = Number(el.value);
    if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`${el.labels?.[0]?.textContent || el.id} must be a whole number from ${lo} to ${hi}`);
    return v;
  }

  async function uploadPhotos() {
    const ids = [];
    for (const file of [...photos.files].slice(0, MAX_PHOTOS)) {
      if (!uploads.has(file)) {
        const up = await uploadFile(file, { signal: ctrl.signal });
        uploads.set(file, up.id);
        await rememberInput(up.id, file);
      }
      ids.push(uploads.get(file));
    }
    return ids;
  }

  function tuningBody() {
    const t = {};
    const s = value(tuneSteps, 1, 10000);
    const r = value(rank, 1, 128);
    if (s !== null) t.steps = s;
    if (r !== null) t.rank = r;
    if (prior.checked) t.prior_preservation = { enabled: true, class_images: value(classImages, 1, 1000) ?? 100 };
    return t;
  }

  async function run(what) {
    msg.show("");
    const reuse = what === "generate" && method() === "expert" && modelSel.value;
    let body;
    try {
      if (!photos.files.length && !reuse) throw new Error("Choose 1-8 photos of the subject first.");
      if (!reuse && !subjectClass.value.trim()) throw new Error("Say what the subject is (the subject class).");
      if (what === "generate" && !prompt.value.trim()) throw new Error("Write a prompt: the scene for the subject.");
      if (what === "tune") {
        body = { subject_class: subjectClass.value.trim(), ...tuningBody() };
      } else {
        body = { prompt: prompt.value.trim(), method: method() };
        if (reuse) body.subject_model = modelSel.value;
        else body.subject_class = subjectClass.value.trim();
        if (method() === "expert" && !reuse) body.tuning = tuningBody();
        const opt = [["steps", steps, 1, 100], ["seed", seed, 0, 4294967295], ["num_outputs", outputsN, 1, 4],
          ["width", width, 64, 1024], ["height", height, 64, 1024]];
        for (const [name, el, lo, hi] of opt) {
          const v = value(el, lo, hi);
          if (v !== null) body[name] = v;
        }
        if (negative.value.trim()) body.negative_prompt = negative.value.trim();
        const metrics = metricBoxes.map((l) => l.querySelector("input")).filter((c) => c.checked).map((c) => c.value);
        if (metrics.length) body.metrics = metrics;
      }
    } catch (err) {
      msg.show(err.message);
      return;
    }
    generate.disabled = tuneOnly.disabled = true;
    result.hidden = true;
    progress.update({ status: "queued", progress: 0, stage: "uploading" });
    jobLine.textContent = "\u00a0";
    try {
      if (photos.files.length) body.subject_images = await uploadPhotos();
      const path = what === "tune" ? "/v1/subject-models" : "/v1/subject-generations";
      const job = await api(path, { method: "POST", json: body, signal: ctrl.signal });
      jobLine.replaceChildren("Job ", h("a", { href: `#/jobs/${job.id}`, dataset: { jobId: job.id } }, job.id));
      progress.update(job);
      const final = FINAL.has(job.status) ? job : await streamJob(job.id, (j) => progress.update(j), { signal: ctrl.signal });
      progress.update(final);
      showResult(final);
      if (final.status === "succeeded" && final.result.subject_model) await loadModels(final.result.subject_model);
    } catch (err) {
      if (ctrl.signal.aborted) return;
      progress.update({ status: "failed", progress: 0, stage: "not submitted" });
      msg.show(err.describe ? err.describe() : err.message);
    } finally {
      if (!ctrl.signal.aborted) generate.disabled = tuneOnly.disabled = false;
    }
  }

  function showResult(job) {
    if (job.status !== "succeeded") {
      msg.show(job.error ? `${job.status}: ${job.error.message} (${job.error.code})` : `The job was ${job.status}.`);
      return;
    }
    result.replaceChildren(h("h2", { id: "subject-result-h" }, job.kind === "subject.tune" ? "Subject model" : "Result"),
      subjectResult(job), h("p.small", {}, h("a", { href: `#/jobs/${job.id}` }, "Open the job page"),
        job.model_profile ? ` · ${job.model_profile} model profile` : ""));
    result.hidden = false;
  }

  async function loadModels(select) {
    let items = [];
    try {
      items = (await api("/v1/subject-models", { signal: ctrl.signal })).items;
    } catch (err) {
      if (!ctrl.signal.aborted) clear(modelsList).append(h("p.empty-note", {}, `Could not list the subject models: ${err.message}`));
      return;
    }
    const current = select ?? modelSel.value;
    modelSel.replaceChildren(h("option", { value: "" }, "Tune in this job"),
      ...items.map((m) => h("option", { value: m.id }, `${m.subject_class} · ${m.id}`)));
    modelSel.value = items.some((m) => m.id === current) ? current : "";
    syncMethod();
    clear(modelsList);
    if (!items.length) {
      modelsList.append(h("p.empty-note", {}, "No subject models yet: tune one with the expert method."));
      return;
    }
    modelsList.append(h("ul.model-list", {}, ...items.map((m) => h("li", { dataset: { modelId: m.id } },
      h("code", {}, m.id), ` ${m.subject_class} · ${m.training?.steps ?? "?"} steps, rank ${m.training?.rank ?? "?"} · `
        + `${(m.size_bytes / 1e6).toFixed(2)} MB`,
      h("button.danger.small-btn", { type: "button", "aria-label": `Delete subject model ${m.id}`, onclick: async () => {
        try {
          await api(`/v1/subject-models/${encodeURIComponent(m.id)}`, { method: "DELETE" });
          await loadModels();
        } catch (err) {
          msg.show(`Could not delete: ${err.describe ? err.describe() : err.message}`);
        }
      } }, "Delete")))));
  }

  loadModels();
  return () => ctrl.abort();
}

/** The outputs of a subject.generate or subject.tune job (also shown on the job page). */
export function subjectResult(job) {
  const r = job.result;
  const box = h("div.subject-result");
  if (job.kind === "subject.tune") {
    box.append(kv([["Subject model", h("code", {}, r.subject_model)], ["Steps", String(r.steps)],
      ["Tuning time", `${fmtNum(r.tune_seconds)} s`], ["Final loss", r.final_loss == null ? "—" : fmtNum(r.final_loss)],
      ["LoRA parameters", String(r.num_parameters)], ["Stored", `${(r.size_bytes / 1e6).toFixed(2)} MB`]]));
    return box;
  }
  box.append(h("div.figures", {}, ...r.images.map((im, i) => figure(im.url, `Image ${i + 1} · ${im.width}×${im.height}`,
    { alt: `Generated image ${i + 1} of the subject`, href: im.url, download: im.url }))));
  const rows = [["Method", r.method === "expert" ? "expert (DreamBooth-LoRA)" : "in-context (BLIP-Diffusion)"],
    ["Tuning", r.tuning], ["Seed", String(r.seed)]];
  if (r.subject_model) rows.push(["Subject model", h("code", {}, r.subject_model)]);
  for (const [k, v] of Object.entries(r.metrics || {})) rows.push([k, h("span", { dataset: { metric: k } }, fmtNum(v))]);
  box.append(kv(rows));
  return box;
}

function kv(pairs) {
  return h("dl.kv", {}, ...pairs.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}
