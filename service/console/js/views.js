// Output views shared by the job page and the playground.
import { h } from "./ui.js";

let compareCount = 0;

/** Before/after comparison: the result drawn over the input, split where the slider says. */
export function compareView(beforeUrl, afterUrl, { width, height } = {}) {
  const id = `compare-${++compareCount}`;
  const after = h("img.after", { src: afterUrl, alt: "After (result)", draggable: "false" });
  const root = h("div.compare-wrap", {},
    h("div.compare", { style: width && height ? { aspectRatio: `${width} / ${height}` } : {} },
      h("img.before", { src: beforeUrl, alt: "Before (input)", draggable: "false" }),
      after,
      h("div.compare-line", { "aria-hidden": "true" })),
    h("div.compare-controls", {},
      h("span", { "aria-hidden": "true" }, "Before"),
      h("label.sr-only", { for: id }, "Before / after split (percent of the width showing the result)"),
      h("input", { id, type: "range", min: "0", max: "100", value: "50", step: "1",
        oninput: (ev) => root.style.setProperty("--split", `${ev.target.value}%`) }),
      h("span", { "aria-hidden": "true" }, "After")));
  root.style.setProperty("--split", "50%");
  return root;
}

/** The file name a result URL ends in (signed URLs carry their query after it). */
export function fileName(url, fallback = "download") {
  try {
    return decodeURIComponent(new URL(url, location.href).pathname.split("/").pop()) || fallback;
  } catch {
    return fallback;
  }
}

/** A download button for a result file (same origin, so `download` names the saved file). */
export function downloadLink(url, label = "Download", name) {
  const file = name || fileName(url);
  return h("a.button.download", { href: url, download: file, "aria-label": `${label} ${file}` }, label);
}

export function figure(src, caption, { alt, width, height, href, download } = {}) {
  const img = h("img", { src, alt: alt || caption, loading: "lazy", width, height });
  return h("figure.output", {}, href ? h("a", { href, target: "_blank", rel: "noopener" }, img) : img,
    h("figcaption", {}, caption, download ? h("div.downloads", {}, downloadLink(download)) : null));
}

/**
 * A scored image: its heat map with one outlined box per anomalous region (box coordinates are
 * pixels of the scored image, the heat map's own size; drawn as percentages so they follow
 * the image's displayed size).
 */
export function anomalyView(item, index, inputUrl) {
  const img = h("img.heat", { src: item.heat_map_url, alt: `Heat map of image ${index + 1} (${item.image})` });
  const boxes = h("div.boxes", { "aria-hidden": "true" });
  const wrap = h("div.overlay-wrap", {}, img, boxes);
  const draw = () => {
    const w = img.naturalWidth;
    const hgt = img.naturalHeight;
    if (!w || !hgt || boxes.childElementCount) return;
    for (const b of item.boxes) {
      boxes.append(h("div.anomaly-box", {
        style: { left: `${(100 * b.x) / w}%`, top: `${(100 * b.y) / hgt}%`, width: `${(100 * b.w) / w}%`, height: `${(100 * b.h) / hgt}%` },
        title: `x ${b.x}, y ${b.y}, ${b.w}×${b.h} px, score ${b.score.toFixed(2)}`,
      }, h("span.box-score", {}, b.score.toFixed(2))));
    }
    wrap.dataset.ready = "true";
  };
  if (img.complete && img.naturalWidth) draw();
  else img.addEventListener("load", draw, { once: true });

  const controls = h("div.figure-controls");
  const boxesId = `boxes-${index}-${Math.random().toString(36).slice(2, 8)}`;
  controls.append(h("label.check", { for: boxesId },
    h("input", { id: boxesId, type: "checkbox", checked: true, onchange: (ev) => { boxes.hidden = !ev.target.checked; } }),
    " Show boxes"));
  if (inputUrl) {
    const heatId = `${boxesId}-heat`;
    controls.append(h("label.check", { for: heatId },
      h("input", { id: heatId, type: "checkbox", checked: true,
        onchange: (ev) => {
          img.src = ev.target.checked ? item.heat_map_url : inputUrl;
          img.alt = ev.target.checked ? `Heat map of image ${index + 1}` : `Image ${index + 1} as submitted`;
        } }),
      " Show heat map"));
  }
  const verdict = item.label ? h("span.badge.status-failed", {}, "Anomalous") : h("span.badge.status-succeeded", {}, "Normal");
  return h("figure.output.anomaly", { dataset: { image: item.image, boxes: String(item.boxes.length) } },
    wrap,
    h("figcaption", {},
      h("div", {}, verdict, " ", h("code", {}, item.image)),
      h("div.small", {}, `score ${fmtNum(item.score)} · normalised ${fmtNum(item.normalized_score)} · `
        + `${item.boxes.length} ${item.boxes.length === 1 ? "region" : "regions"}`),
      controls,
      h("div.downloads", {}, downloadLink(item.heat_map_url, "Heat map"), downloadLink(item.mask_url, "Mask"),
        downloadLink(item.anomaly_map_url, "Anomaly map"),
        item.segmentation_url ? downloadLink(item.segmentation_url, "Segmentation") : null),
      h("div.small", {}, "Anomaly map: a 16-bit PNG of the raw scores.")));
}

/** One row per scored image: its name (`nameOf(upload id)`, else the id), scores, label, regions. */
export function scoreTable(items, nameOf = () => null) {
  return h("div.table-wrap", {}, h("table.scores", {}, h("caption.sr-only", {}, "Score of each image"),
    h("thead", {}, h("tr", {}, ...["Image", "Score", "Normalised", "Label", "Regions"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, ...items.map((it) => h("tr", { dataset: { image: it.image } },
      h("th", { scope: "row" }, nameOf(it.image) || it.image), h("td.num", {}, fmtNum(it.score)),
      h("td.num", {}, fmtNum(it.normalized_score)), h("td", {}, it.label ? "anomalous" : "normal"),
      h("td.num", {}, String(it.boxes.length)))))));
}

export function fmtNum(x) {
  if (typeof x !== "number") return String(x);
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toPrecision(3);
}

export function videoView(v, caption, poster) {
  return h("figure.output.video", {},
    h("video", { src: v.url, controls: true, preload: "metadata", poster, width: v.width, height: v.height,
      playsinline: true, loop: true, "aria-label": caption }),
    h("figcaption", {}, caption, h("div.small", {}, `${v.width}×${v.height} · ${v.frames} frames at ${v.fps} fps`),
      h("div.downloads", {}, downloadLink(v.url, "MP4"), v.gif_url ? downloadLink(v.gif_url, "GIF") : null)));
}
