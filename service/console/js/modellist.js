// Models (#/models): this key's anomaly models (each links to its page) and tuned video models
// (Tune-A-Video tunings kept by video edits, paged), each deletable here.
import { api } from "./api.js";
import { clear, h, messageBox, relTime, timeEl } from "./ui.js";
import { fmtNum } from "./views.js";

const MODEL_LABEL = { patchcore: "PatchCore", reverse_distillation: "Reverse Distillation" };
const PAGE = 20;

export function renderModels(main) {
  document.title = "Models · visionjobs";
  const ctrl = new AbortController();
  const msg = messageBox();
  const anomalyList = h("ul.model-cards", { id: "anomaly-models" });
  const tunedList = h("ul.model-cards", { id: "tuned-models" });
  const more = h("button.secondary", { type: "button", hidden: true, id: "tuned-more", onclick: () => loadTuned(true) }, "Load more");
  let cursor = null;

  main.append(h("section.panel", { "aria-labelledby": "models-h" },
    h("div.page-head", {}, h("h1", { id: "models-h" }, "Models")), msg.root,
    h("h2", {}, "Anomaly models"), anomalyList,
    h("h2", {}, "Tuned video models"),
    h("p.small", {}, "Kept by video edits; reuse one from the ", h("a", { href: "#/video" }, "video edit form"), "."),
    tunedList, more));

  function deleteButton(label, path, li, after) {
    return h("button.danger.small-btn", { type: "button", "aria-label": `Delete ${label}`, onclick: async (ev) => {
      ev.target.disabled = true;
      try {
        await api(path, { method: "DELETE", signal: ctrl.signal });
        li.remove();
        after();
      } catch (err) {
        ev.target.disabled = false;
        if (!ctrl.signal.aborted) msg.show(`Could not delete: ${err.describe ? err.describe() : err.message}`);
      }
    } }, "Delete");
  }

  function emptyNote(list, text) {
    if (!list.children.length) list.append(h("li.empty-note", {}, text));
  }

  async function loadAnomaly() {
    try {
      const { items } = await api("/v1/anomaly-models", { signal: ctrl.signal });
      clear(anomalyList);
      for (const m of items) {
        const li = h("li", { dataset: { modelId: m.id } },
          h("div.card-main", {}, h("a", { href: `#/models/${m.id}` }, m.name), " ",
            h("span.small", {}, `${MODEL_LABEL[m.model] || m.model} · ${m.backbone} · ${m.image_size} px`),
            h("div.small", {}, h("code", {}, m.id), ` · image threshold ${fmtNum(m.thresholds?.image)}`
              + ` (${m.thresholds?.image_method || "?"}) · `, timeEl(m.created_at, relTime(m.created_at)))));
        li.append(deleteButton(`anomaly model ${m.id}`, `/v1/anomaly-models/${encodeURIComponent(m.id)}`, li,
          () => emptyNote(anomalyList, "No anomaly models.")));
        anomalyList.append(li);
      }
      emptyNote(anomalyList, "No anomaly models yet: fit one in the anomaly playground.");
    } catch (err) {
      if (!ctrl.signal.aborted) msg.show(`Could not list the anomaly models: ${err.message}`);
    }
  }

  async function loadTuned(append = false) {
    try {
      const q = new URLSearchParams({ limit: String(PAGE) });
      if (append && cursor) q.set("cursor", cursor);
      const page = await api(`/v1/video-models?${q}`, { signal: ctrl.signal });
      if (!append) clear(tunedList);
      tunedList.querySelector(".empty-note")?.remove();
      for (const m of page.items) {
        const c = m.clip || {};
        const li = h("li", { dataset: { modelId: m.id } },
          h("div.card-main", {}, h("strong", {}, m.source_prompt), " ",
            h("span.small", {}, `${c.frames ?? "?"} frames ${c.width ?? "?"}×${c.height ?? "?"} · ${m.tune_steps} tuning steps`
              + (m.size_bytes != null ? ` · ${(m.size_bytes / 1e6).toFixed(2)} MB` : "")),
            h("div.small", {}, h("code", {}, m.id), " · from ", h("a", { href: `#/jobs/${m.job_id}` }, "its job"), " · ",
              timeEl(m.created_at, relTime(m.created_at)))));
        li.append(deleteButton(`tuned video model ${m.id}`, `/v1/video-models/${encodeURIComponent(m.id)}`, li,
          () => emptyNote(tunedList, "No tuned video models.")));
        tunedList.append(li);
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
      emptyNote(tunedList, "No tuned video models yet: a video edit keeps its tuning here.");
    } catch (err) {
      if (!ctrl.signal.aborted) msg.show(`Could not list the tuned video models: ${err.message}`);
    }
  }

  loadAnomaly();
  loadTuned();
  return () => ctrl.abort();
}
