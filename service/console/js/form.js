// What the job forms share: labelled fields, number parsing that names the field, a growing
// list of prompts, uploads kept per page, and submit -> follow -> result.
import { api, FINAL, streamJob, uploadFile } from "./api.js";
import { rememberInput } from "./inputs.js";
import { h } from "./ui.js";

export function field(id, label, control, hint) {
  const hintId = hint ? `${id}-hint` : undefined;
  if (hintId) control.setAttribute("aria-describedby", hintId);
  return h("div.field", {}, h("label", { for: id }, label), control, hint ? h("span.hint", { id: hintId }, hint) : null);
}

export function numInput(id, lo, hi, value = "", { step = "1", placeholder } = {}) {
  return h("input", { id, type: "number", min: String(lo), max: String(hi), step, value, placeholder,
    inputMode: step === "1" ? "numeric" : "decimal" });
}

function labelOf(el) {
  return el.labels?.[0]?.textContent || el.getAttribute("aria-label") || el.id;
}

/** The number in `el` (null when empty); throws naming the field when it is out of range. */
export function numValue(el, lo, hi, { integer = true } = {}) {
  if (el.value === "") return null;
  const v = Number(el.value);
  if (!Number.isFinite(v) || (integer && !Number.isInteger(v)) || v < lo || v > hi) {
    throw new Error(`${labelOf(el)} must be ${integer ? "a whole number" : "a number"} from ${lo} to ${hi}`);
  }
  return v;
}

/** Set body[name] for every [name, el, lo, hi] whose field is filled in. */
export function putNumbers(body, specs) {
  for (const [name, el, lo, hi, opts] of specs) {
    const v = numValue(el, lo, hi, opts);
    if (v !== null) body[name] = v;
  }
  return body;
}

/** A list of 1..max text inputs ("Prompt 1", "Prompt 2", ...) with add and remove buttons. */
export function promptList(prefix, noun, { max = 8, initial = [""], placeholder = "" } = {}) {
  const list = h("ol.prompt-list", { id: `${prefix}-list` });
  const add = h("button.secondary.small-btn", { type: "button", id: `${prefix}-add`, onclick: () => addRow("") },
    `Add ${noun.toLowerCase()}`);
  function renumber() {
    [...list.children].forEach((li, i) => {
      li.querySelector("input").setAttribute("aria-label", `${noun} ${i + 1}`);
      li.querySelector("input").id = `${prefix}-${i + 1}`;
      const remove = li.querySelector("button");
      remove.setAttribute("aria-label", `Remove ${noun.toLowerCase()} ${i + 1}`);
      remove.hidden = list.children.length === 1;
    });
    add.hidden = list.children.length >= max;
  }
  function addRow(value) {
    const input = h("input", { type: "text", maxLength: 1000, value, placeholder, autocomplete: "off" });
    const li = h("li", {}, input, h("button.secondary.small-btn", { type: "button", onclick: () => { li.remove(); renumber(); } }, "×"));
    list.append(li);
    renumber();
    return input;
  }
  initial.forEach(addRow);
  return {
    root: h("div.prompts", {}, list, add),
    values: () => [...list.querySelectorAll("input")].map((i) => i.value.trim()).filter(Boolean),
    set(values) {
      list.replaceChildren();
      (values.length ? values : [""]).forEach(addRow);
    },
  };
}

/** Uploads of this page: a file is uploaded once, and remembered for its job page. */
export function uploader(signal) {
  const done = new Map(); // File -> upload
  return async function upload(file) {
    if (!done.has(file)) {
      const up = await uploadFile(file, { signal });
      done.set(file, up);
      await rememberInput(up.id, file);
    }
    return done.get(file);
  };
}

/**
 * Run one job from a form: `button` is disabled while it runs, `progress` follows it, the job
 * line links to its page. `build()` returns [path, body] (it may upload first). Resolves with
 * the final job, or null when it was not submitted (the message says why).
 */
export async function submitJob({ button, progress, jobLine, msg, signal }, build) {
  msg.show("");
  const label = button.textContent;
  button.disabled = true;
  progress.update({ status: "queued", progress: 0, stage: "uploading" });
  jobLine.textContent = "\u00a0";
  try {
    const [path, body] = await build();
    const job = await api(path, { method: "POST", json: body, signal });
    button.textContent = "Running…";
    jobLine.replaceChildren("Job ", h("a", { href: `#/jobs/${job.id}`, dataset: { jobId: job.id } }, job.id));
    progress.update(job);
    const final = FINAL.has(job.status) ? job : await streamJob(job.id, (j) => progress.update(j), { signal });
    progress.update(final);
    if (final.status !== "succeeded") {
      msg.show(final.error ? `${final.status}: ${final.error.message} (${final.error.code})` : `The job was ${final.status}.`);
    }
    return final;
  } catch (err) {
    if (signal.aborted) return null;
    progress.update({ status: "failed", progress: 0, stage: "not submitted" });
    msg.show(err.describe ? err.describe() : err.message);
    return null;
  } finally {
    if (!signal.aborted) {
      button.disabled = false;
      button.textContent = label;
    }
  }
}

/** A form's status area: the progress bar, the job line and the message. */
export function runStatus(progress, jobLine, msg) {
  return [h("div.run-status", {}, progress.root, jobLine), msg.root];
}
