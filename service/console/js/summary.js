// What a job is about, in one line and a picture: its prompt(s) or name, and a thumbnail of its
// result (or of its input, when this browser submitted it).
import { inputUrl } from "./inputs.js";

const join = (list) => (Array.isArray(list) ? list.filter((x) => typeof x === "string").join(" → ") : "");

/** The job's one-line description (prompt, prompts, model name, ...); "" when it has none. */
export function jobText(job) {
  const p = job.params || {};
  switch (job.kind) {
    case "colorize": return p.prompt || "no prompt";
    case "video.generate": return join(p.prompts);
    case "video.edit": return join(p.edits) + (p.source_prompt ? ` (from “${p.source_prompt}”)` : "");
    case "anomaly.fit": return p.name || "";
    case "anomaly.score": {
      const n = Array.isArray(p.images) ? p.images.length : p.images?.elided ?? "";
      return `${n} ${n === 1 ? "image" : "images"} with ${p.model_id || "a model"}`;
    }
    case "subject.generate": return p.prompt || "";
    case "subject.tune": return p.subject_class ? `a ${p.subject_class}` : "";
    default: return "";
  }
}

/** The URL of a still image of the result, when the kind makes one. */
export function resultThumb(job) {
  const r = job.status === "succeeded" ? job.result : null;
  if (!r) return null;
  if (r.images?.[0]?.url) return r.images[0].url; // colorize, subject.generate
  if (r.thumbnail_url) return r.thumbnail_url; // video.generate
  if (r.items?.[0]?.heat_map_url) return r.items[0].heat_map_url; // anomaly.score
  return null;
}

/** A result thumbnail, else the input this browser kept (colorize, subject photos). */
export async function jobThumb(job) {
  const thumb = resultThumb(job);
  if (thumb) return thumb;
  const p = job.params || {};
  const input = typeof p.image === "string" ? p.image : Array.isArray(p.subject_images) ? p.subject_images[0] : null;
  return input ? inputUrl(input) : null;
}
