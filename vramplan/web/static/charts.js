// Hand-written SVG charts (no CDN, no library): memory vs seq / batch per method with the GPU's line
// (GET /api/sweep, the sweep `vramplan plot` draws), and the step's phase timeline (the estimate's `phases`).
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const METHOD_COLORS = { full: "#c0392b", lora: "#2874a6", qlora: "#239b56" };

function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// A round GiB step (1, 2 or 5 times a power of ten) giving at most 6 gridlines up to `max` bytes.
function gibStep(max) {
  const raw = max / 2 ** 30 / 5;
  const p = 10 ** Math.floor(Math.log10(raw || 1));
  return ([1, 2, 5, 10].find((m) => m * p >= raw) || 10) * p;
}

function frame(svg, W, H, M, yMax, yLabel) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const y = (v) => H - M.b - ((H - M.t - M.b) * v) / yMax;
  const step = gibStep(yMax);
  for (let g = 0; g * 2 ** 30 <= yMax; g += step) {
    const v = g * 2 ** 30;
    svg.append(el("line", { x1: M.l, x2: W - M.r, y1: y(v), y2: y(v), class: "grid" }));
    svg.append(el("text", { x: M.l - 4, y: y(v) + 4, class: "tick", "text-anchor": "end" }, String(+g.toFixed(2))));
  }
  svg.append(el("text", { x: 12, y: M.t + (H - M.t - M.b) / 2, class: "axis",
                          transform: `rotate(-90 12 ${M.t + (H - M.t - M.b) / 2})`, "text-anchor": "middle" }, yLabel));
  return y;
}

function drawSweep(svg, data) {
  const W = 460, H = 260, M = { l: 44, r: 70, t: 12, b: 34 };
  const all = Object.values(data.series).flat().filter((v) => v !== null);
  const yMax = Math.max(...all, data.gpu_usable_bytes || 0) * 1.08 || 1;
  const y = frame(svg, W, H, M, yMax, data.gpu ? "GiB on the GPU" : "GiB at the peak");
  const n = data.values.length;
  const x = (i) => M.l + ((W - M.l - M.r) * i) / Math.max(n - 1, 1);
  data.values.forEach((v, i) => svg.append(el("text", { x: x(i), y: H - M.b + 14, class: "tick",
                                                          "text-anchor": "middle" }, String(v))));
  svg.append(el("text", { x: M.l + (W - M.l - M.r) / 2, y: H - 4, class: "axis", "text-anchor": "middle" },
                data.field === "seq" ? "sequence length" : "micro-batch"));
  for (const [method, ys] of Object.entries(data.series)) {
    const pts = ys.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`)).filter((p) => p !== null);
    const g = el("g", { class: "series", "data-method": method });
    g.append(el("polyline", { points: pts.join(" "), fill: "none", stroke: METHOD_COLORS[method], "stroke-width": 2 }));
    ys.forEach((v, i) => {
      if (v === null) return;
      const c = el("circle", { cx: x(i), cy: y(v), r: 3, fill: METHOD_COLORS[method] });
      c.append(el("title", {}, `${method}, ${data.field} ${data.values[i]}: ${(v / 2 ** 30).toFixed(2)} GiB`));
      g.append(c);
    });
    const last = ys.findLastIndex((v) => v !== null);
    if (last >= 0) g.append(el("text", { x: x(last) + 6, y: y(ys[last]) + 4, class: "label", fill: METHOD_COLORS[method] }, method));
    svg.append(g);
  }
  if (data.gpu_usable_bytes) {
    const yy = y(data.gpu_usable_bytes);
    svg.append(el("line", { x1: M.l, x2: W - M.r, y1: yy, y2: yy, class: "gpu-line" }));
    svg.append(el("text", { x: W - M.r + 4, y: yy + 4, class: "label" }, `${data.gpu}`));
  }
}

function drawTimeline(svg, result) {
  const phases = Object.entries(result.phases);
  const W = 460, H = 260, M = { l: 44, r: 12, t: 16, b: 60 };
  const usable = result.gpu_usable_bytes || 0;
  const yMax = Math.max(...phases.map(([, v]) => v), usable) * 1.08 || 1;
  const y = frame(svg, W, H, M, yMax, "GiB allocated");
  const step = (W - M.l - M.r) / phases.length;
  phases.forEach(([name, v], i) => {
    const r = el("rect", { x: M.l + i * step + step * 0.15, y: y(v), width: step * 0.7, height: y(0) - y(v),
                           class: name === result.peak_phase ? "bar peak" : "bar", "data-phase": name });
    r.append(el("title", {}, `${name}: ${(v / 2 ** 30).toFixed(2)} GiB`));
    svg.append(r);
    const tx = M.l + i * step + step / 2;
    svg.append(el("text", { x: tx, y: H - M.b + 12, class: "tick", "text-anchor": "end",
                            transform: `rotate(-35 ${tx} ${H - M.b + 12})` }, name.replaceAll("_", " ")));
  });
  if (usable) {
    svg.append(el("line", { x1: M.l, x2: W - M.r, y1: y(usable), y2: y(usable), class: "gpu-line" }));
    svg.append(el("text", { x: W - M.r, y: y(usable) - 4, class: "label", "text-anchor": "end" },
                  `${result.gpu} usable`));
  }
}
