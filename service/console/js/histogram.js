// A histogram of raw anomaly scores with the image threshold drawn over it (SVG, no library).
// Bars left of the threshold are normal, right of it anomalous; moving the threshold recolours
// them and recounts, so a new threshold can be judged before it is saved.
const NS = "http://www.w3.org/2000/svg";
const W = 600;
const H = 180;
const PAD = 24;
const BINS = 24;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/** scores: raw image scores; returns {root, summary, setThreshold(t)}. */
export function scoreHistogram(scores, threshold) {
  const root = svg("svg", { viewBox: `0 0 ${W} ${H + PAD}`, class: "histogram", role: "img", preserveAspectRatio: "none" });
  const summary = document.createElement("p");
  summary.className = "small histogram-summary";
  summary.setAttribute("aria-live", "polite");
  let lo = Math.min(...scores);
  let hi = Math.max(...scores);
  if (Number.isFinite(threshold)) {
    lo = Math.min(lo, threshold);
    hi = Math.max(hi, threshold);
  }
  const span = hi - lo || 1;
  lo -= span * 0.05;
  hi += span * 0.05;
  const width = (hi - lo) / BINS;
  const counts = new Array(BINS).fill(0);
  for (const s of scores) counts[Math.min(BINS - 1, Math.floor((s - lo) / width))] += 1;
  const top = Math.max(...counts, 1);
  const x = (v) => ((v - lo) / (hi - lo)) * W;
  const bars = counts.map((n, i) => {
    const bh = (n / top) * (H - 10);
    const rect = svg("rect", { x: x(lo + i * width) + 1, y: H - bh, width: Math.max(1, W / BINS - 2), height: bh });
    root.append(rect);
    return { rect, center: lo + (i + 0.5) * width };
  });
  root.append(svg("line", { x1: 0, y1: H, x2: W, y2: H, class: "axis" }));
  const line = svg("line", { y1: 0, y2: H, class: "threshold" });
  root.append(line);
  const tick = (v, anchor) => {
    const t = svg("text", { x: anchor === "end" ? W - 2 : 2, y: H + 16, "text-anchor": anchor, class: "tick" });
    t.textContent = v.toPrecision(3);
    root.append(t);
  };
  tick(lo, "start");
  tick(hi, "end");

  function setThreshold(t) {
    const valid = Number.isFinite(t);
    line.style.display = valid ? "" : "none";
    if (valid) {
      line.setAttribute("x1", x(t));
      line.setAttribute("x2", x(t));
    }
    bars.forEach((b) => b.rect.setAttribute("class", valid && b.center > t ? "bar anomalous" : "bar normal"));
    const above = valid ? scores.filter((s) => s > t).length : 0;
    summary.textContent = `${scores.length} scored ${scores.length === 1 ? "image" : "images"}: `
      + `${above} above the threshold (anomalous), ${scores.length - above} normal.`;
    summary.dataset.above = String(above);
    root.setAttribute("aria-label", `Histogram of ${scores.length} image scores from ${lo.toPrecision(3)} to `
      + `${hi.toPrecision(3)}; threshold ${valid ? t.toPrecision(3) : "not set"}, ${above} above it`);
  }
  setThreshold(threshold);
  return { root, summary, setThreshold };
}
