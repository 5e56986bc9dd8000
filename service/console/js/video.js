// Video playground (#/video): a long video from several prompts (DiTCtrl, one part per prompt),
// and a video edit (Tune-A-Video): tune on an uploaded clip, or reuse a tuned model, then one
// edited video per prompt.
import { api } from "./api.js";
import { field, numInput, promptList, putNumbers, runStatus, submitJob, uploader } from "./form.js";
import { fmtDuration, h, messageBox, progressView } from "./ui.js";
import { videoView } from "./views.js";

const VIDEO_TYPES = "video/mp4,video/webm,video/quicktime,image/gif";

export function renderVideo(main) {
  document.title = "Video playground · visionjobs";
  const ctrl = new AbortController();
  const upload = uploader(ctrl.signal);
  main.append(generationPanel(ctrl.signal), editPanel(ctrl.signal, upload));
  return () => ctrl.abort();
}

function generationPanel(signal) {
  const msg = messageBox();
  const progress = progressView("Video generation progress");
  const jobLine = h("p.small.job-line", {}, "\u00a0");
  const prompts = promptList("gen-prompt", "Prompt", { initial: ["", ""], placeholder: "e.g. a cat walks on grass" });
  const steps = numInput("gen-steps", 1, 100, "", { placeholder: "50" });
  const seed = numInput("gen-seed", 0, 4294967295, "", { placeholder: "random" });
  const width = numInput("gen-width", 16, 1360, "", { placeholder: "720" });
  const height = numInput("gen-height", 16, 1360, "", { placeholder: "480" });
  const overlap = numInput("gen-overlap", 0, 12, "", { placeholder: "6" });
  const transition = numInput("gen-transition", 0, 4, "", { placeholder: "1" });
  const fps = numInput("gen-fps", 1, 60, "", { placeholder: "16" });
  const kv = h("input", { id: "gen-kv", type: "checkbox", checked: true });
  const submit = h("button.primary", { type: "submit", id: "gen-submit" }, "Generate video");
  const result = h("div.result", { hidden: true, id: "gen-result" });

  const form = h("form.side", { id: "video-generation-form", novalidate: true, onsubmit: (ev) => { ev.preventDefault(); run(); } },
    h("fieldset.plain", {}, h("legend", {}, "Prompts, one per part of the video (1-8)"), prompts.root),
    h("details.advanced", {}, h("summary", {}, "Advanced"),
      h("div.grid3", {}, field("gen-steps", "Steps", steps), field("gen-seed", "Seed", seed), field("gen-fps", "FPS", fps)),
      h("div.grid3", {}, field("gen-width", "Width", width), field("gen-height", "Height", height),
        field("gen-overlap", "Overlap", overlap)),
      h("div.grid3", {}, field("gen-transition", "Transitions", transition)),
      h("label.check", { for: "gen-kv" }, kv, " KV sharing (keeps the subject consistent across prompts)")),
    h("div.submit-row", {}, submit), ...runStatus(progress, jobLine, msg));

  async function run() {
    const final = await submitJob({ button: submit, progress, jobLine, msg, signal }, async () => {
      const texts = prompts.values();
      if (!texts.length) throw new Error("Write at least one prompt.");
      const body = putNumbers({ prompts: texts }, [["steps", steps, 1, 100], ["seed", seed, 0, 4294967295],
        ["width", width, 16, 1360], ["height", height, 16, 1360], ["overlap", overlap, 0, 12],
        ["transition_segments", transition, 0, 4], ["fps", fps, 1, 60]]);
      if (!kv.checked) body.kv_sharing = { enabled: false };
      return ["/v1/video-generations", body];
    });
    if (final?.status !== "succeeded") return;
    const r = final.result;
    result.replaceChildren(h("h3", {}, "Result"),
      h("div.figures", {}, videoView(r.video, `${r.segments} segments · seed ${r.seed}`, r.thumbnail_url)),
      h("p.small", {}, h("a", { href: `#/jobs/${final.id}` }, "Open the job page")));
    result.hidden = false;
  }

  return h("section.panel", { "aria-labelledby": "gen-h" },
    h("div.page-head", {}, h("h1", { id: "gen-h" }, "Video generation")),
    h("p.lead", {}, "A long video that moves from one prompt to the next (DiTCtrl on CogVideoX)."),
    form, result);
}

function editPanel(signal, upload) {
  const msg = messageBox();
  const progress = progressView("Video edit progress");
  const jobLine = h("p.small.job-line", {}, "\u00a0");
  const clip = h("input", { id: "edit-clip", type: "file", accept: VIDEO_TYPES });
  const preview = h("div.clip-preview");
  const sourcePrompt = h("input", { id: "edit-source", type: "text", maxLength: 1000, placeholder: "e.g. a man skiing", autocomplete: "off" });
  const modelSel = h("select", { id: "edit-model" }, h("option", { value: "" }, "Tune on the clip"));
  const edits = promptList("edit-prompt", "Edit", { placeholder: "e.g. a bear skiing" });
  const tuneSteps = numInput("edit-tune-steps", 1, 2000, "", { placeholder: "500" });
  const frames = numInput("edit-frames", 1, 48, "", { placeholder: "24" });
  const stride = numInput("edit-stride", 1, 30, "", { placeholder: "2" });
  const width = numInput("edit-width", 64, 1024, "", { placeholder: "512" });
  const height = numInput("edit-height", 64, 1024, "", { placeholder: "512" });
  const steps = numInput("edit-steps", 1, 100, "", { placeholder: "50" });
  const seed = numInput("edit-seed", 0, 4294967295, "", { placeholder: "random" });
  const gif = h("input", { id: "edit-gif", type: "checkbox" });
  const submit = h("button.primary", { type: "submit", id: "edit-submit" }, "Edit video");
  const result = h("div.result", { hidden: true, id: "edit-result" });
  const tuning = h("div.tuning", {},
    field("edit-clip", "Clip (MP4, WebM, MOV or GIF)", clip), preview,
    field("edit-source", "What the clip shows", sourcePrompt));
  const tuneSettings = h("div.grid3", {}, field("edit-tune-steps", "Tuning steps", tuneSteps),
    field("edit-frames", "Frames", frames), field("edit-stride", "Frame stride", stride));
  const sizeSettings = h("div.grid3", {}, field("edit-width", "Width", width), field("edit-height", "Height", height));

  const sync = () => {
    const reuse = Boolean(modelSel.value);
    tuning.hidden = tuneSettings.hidden = sizeSettings.hidden = reuse;
  };
  modelSel.addEventListener("change", sync);
  clip.addEventListener("change", () => {
    const file = clip.files[0];
    preview.replaceChildren(file ? h("video", { src: URL.createObjectURL(file), controls: true, muted: true, playsinline: true,
      "aria-label": `Clip ${file.name}` }) : "");
  });

  const form = h("form.side", { id: "video-edit-form", novalidate: true, onsubmit: (ev) => { ev.preventDefault(); run(); } },
    field("edit-model", "Tuned model", modelSel, "Reuse an earlier tuning (no clip, no tuning), or tune on a clip."),
    tuning,
    h("fieldset.plain", {}, h("legend", {}, "Edits, one video each (1-8)"), edits.root),
    h("details.advanced", {}, h("summary", {}, "Advanced"), tuneSettings, sizeSettings,
      h("div.grid3", {}, field("edit-steps", "Steps", steps), field("edit-seed", "Seed", seed)),
      h("label.check", { for: "edit-gif" }, gif, " Also a GIF of each edit")),
    h("div.submit-row", {}, submit), ...runStatus(progress, jobLine, msg));

  async function run() {
    const final = await submitJob({ button: submit, progress, jobLine, msg, signal }, async () => {
      const prompts = edits.values();
      if (!prompts.length) throw new Error("Write at least one edit prompt.");
      const body = putNumbers({ edits: prompts }, [["steps", steps, 1, 100], ["seed", seed, 0, 4294967295]]);
      if (gif.checked) body.gif = true;
      if (modelSel.value) {
        body.tuned_model = modelSel.value;
      } else {
        if (!clip.files[0]) throw new Error("Choose a clip, or a tuned model to reuse.");
        if (!sourcePrompt.value.trim()) throw new Error("Say what the clip shows.");
        putNumbers(body, [["tune_steps", tuneSteps, 1, 2000], ["frames", frames, 1, 48], ["frame_stride", stride, 1, 30],
          ["width", width, 64, 1024], ["height", height, 64, 1024]]);
        body.source_prompt = sourcePrompt.value.trim();
        body.video = (await upload(clip.files[0])).id;
      }
      return ["/v1/video-edits", body];
    });
    if (final?.status !== "succeeded") return;
    const r = final.result;
    result.replaceChildren(h("h3", {}, "Result"),
      h("div.figures", {}, ...r.videos.map((v) => videoView(v, v.prompt))),
      h("p.small", {}, `Tuning ${r.tuning}${r.tuning === "ran" ? ` in ${fmtDuration(r.tune_seconds * 1000)}` : ""} · tuned model `,
        h("code", {}, r.tuned_model_id), " · ", h("a", { href: `#/jobs/${final.id}` }, "Open the job page")));
    result.hidden = false;
    await loadModels(r.tuned_model_id);
  }

  async function loadModels(select) {
    try {
      const page = await api("/v1/video-models?limit=100", { signal });
      modelSel.replaceChildren(h("option", { value: "" }, "Tune on the clip"),
        ...page.items.map((m) => h("option", { value: m.id }, `${m.source_prompt} · ${m.id}`)));
      if (select && page.items.some((m) => m.id === select)) modelSel.value = select;
      sync();
    } catch (err) {
      if (!signal.aborted) msg.show(`Could not list the tuned models: ${err.message}`);
    }
  }
  loadModels();

  return h("section.panel", { "aria-labelledby": "edit-h" },
    h("div.page-head", {}, h("h2", { id: "edit-h" }, "Video edit")),
    h("p.lead", {}, "Tune on a short clip, then get one edited video per prompt (Tune-A-Video). ",
      h("a", { href: "#/models" }, "Manage tuned models")),
    form, result);
}
