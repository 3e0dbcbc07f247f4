// vramplan's page: the form's state lives in the URL; every change asks /api/estimate (what `--json` prints).
"use strict";
const form = document.getElementById("plan");
const GIB = 2 ** 30;
const COLORS = ["#2874a6", "#239b56", "#c0392b", "#af7ac5", "#f39c12", "#16a085", "#7f8c8d", "#d35400", "#34495e",
                "#e84393"];
let pending = 0;
let sweeping = 0;
let lastSweep = "";

// One control per plan flag of the CLI (GET /api/options' `knobs`, read from the CLI's own parser).
function buildKnobs(knobs) {
  const box = document.getElementById("knobs");
  box.replaceChildren(...knobs.map((k) => {
    const label = document.createElement("label");
    label.dataset.kind = k.kind;
    label.title = k.help;
    let input;
    if (k.kind === "choice" || k.kind === "bool") {
      input = document.createElement("select");
      input.append(new Option("(default)", ""), ...k.choices.map((c) => new Option(String(c))));
    } else if (k.kind === "switch") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.value = "1";
    } else {
      input = document.createElement("input");
      if (k.kind === "int" || k.kind === "number") { input.type = "number"; if (k.kind === "number") input.step = "any"; }
      const list = k.suggestions;
      if (list) {
        const dl = document.createElement("datalist");
        dl.id = `list-${k.name}`;
        dl.append(...list.map((o) => new Option(o)));
        label.append(dl);
        input.setAttribute("list", dl.id);
      }
      input.placeholder = "default";
    }
    input.name = k.name;
    label.prepend(document.createTextNode(k.name.replaceAll("-", " ") + " "));
    label.append(input);
    return label;
  }));
}

function gib(n) { return (n / GIB).toFixed(2); }

function stateToForm() {
  const params = new URLSearchParams(location.search);
  for (const [key, value] of params) {
    const el = form.elements.namedItem(key);
    if (el && el.type === "checkbox") el.checked = value === "1";
    else if (el) el.value = value;
  }
}

function formToQuery() {
  const params = new URLSearchParams();
  for (const el of form.elements) {
    if (el.type === "checkbox") { if (el.checked) params.set(el.name, "1"); continue; }
    if (el.name && el.value !== "") params.set(el.name, el.value);
  }
  return params;
}

function rows(tbody, entries) {
  tbody.replaceChildren(...entries.map(([name, n]) => {
    const tr = document.createElement("tr");
    const a = document.createElement("td"); a.textContent = name.replaceAll("_", " ");
    const b = document.createElement("td"); b.textContent = gib(n);
    tr.append(a, b);
    return tr;
  }));
}

function show(result) {
  const verdict = document.getElementById("verdict");
  const total = result.total_gpu_bytes ?? result.peak_bytes;
  let words = `peak ${gib(result.peak_bytes)} GiB in ${result.peak_phase}`;
  verdict.className = "";
  if (result.gpu) {
    words += `; ${gib(total)} GiB on ${result.gpu} of ${gib(result.gpu_usable_bytes)} usable: `;
    words += result.fits ? "fits" : "does not fit";
    verdict.className = result.fits ? "fits" : "nofit";
  }
  verdict.textContent = words;
  // components: named parts, engine_parts (by name) and their total (not a part)
  const { total: _sum, engine_parts: engineParts = {}, ...named } = result.components;
  const comps = Object.entries({ ...named, ...engineParts }).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
  rows(document.querySelector("#components tbody"), comps);
  rows(document.querySelector("#phases tbody"), Object.entries(result.phases));
  const bar = document.getElementById("bar");
  const scale = Math.max(total, result.gpu_usable_bytes || 0);
  bar.replaceChildren(...comps.map(([name, n], i) => {
    const s = document.createElement("span");
    s.style.width = `${(100 * n) / scale}%`;
    s.style.background = COLORS[i % COLORS.length];
    s.title = `${name.replaceAll("_", " ")}: ${gib(n)} GiB`;
    return s;
  }));
  const extra = total - comps.reduce((sum, [, n]) => sum + n, 0);
  if (extra > 0) {
    const s = document.createElement("span");
    s.style.width = `${(100 * extra) / scale}%`;
    s.style.background = "#bbbbbb";
    s.title = `allocator reserve + CUDA context: ${gib(extra)} GiB`;
    bar.append(s);
  }
  if (result.gpu_usable_bytes) {
    const line = document.createElement("i");
    line.className = "gpu";
    line.style.left = `${(100 * result.gpu_usable_bytes) / scale}%`;
    line.title = `${result.gpu} usable`;
    bar.append(line);
  }
}

async function update() {
  const query = formToQuery();
  history.replaceState(null, "", `?${query}`);
  const mine = ++pending;
  const response = await fetch(`/api/estimate?${query}`);
  const body = await response.json();
  if (mine !== pending) return;  // a newer request is on its way
  const error = document.getElementById("error");
  error.hidden = response.ok;
  error.textContent = response.ok ? "" : body.error;
  document.getElementById("result").hidden = !response.ok;
  if (response.ok) {
    show(body);
    drawTimeline(document.getElementById("chart-timeline"), body);
  }
  document.body.dataset.state = response.ok ? "ready" : "error";
  if (response.ok) sweep(query);
}

// The sweeps are 15-18 estimates each (with a GPU, each simulates the allocator): asked after the estimate,
// only when the plan changed, and drawn when both have come back.
async function sweep(query) {
  const key = query.toString();
  if (key === lastSweep) return;
  lastSweep = key;
  const mine = ++sweeping;
  document.body.dataset.charts = "computing";
  const answers = await Promise.all(["seq", "batch"].map(async (field) => {
    const q = new URLSearchParams(query);
    q.set("field", field);
    const response = await fetch(`/api/sweep?${q}`);
    return [field, response.ok, await response.json()];
  }));
  if (mine !== sweeping) return;
  for (const [field, ok, body] of answers) {
    const svg = document.getElementById(`chart-${field}`);
    if (ok) drawSweep(svg, body);
    else svg.replaceChildren();
  }
  document.body.dataset.charts = "ready";
}

async function upload(event) {
  event.stopPropagation();  // not a plan change by itself: the form's listener would clear an upload's error
  const file = event.target.files[0];
  if (!file) return;
  const response = await fetch(`/api/config?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
  const body = await response.json();
  const error = document.getElementById("error");
  if (!response.ok) {
    error.hidden = false;
    error.textContent = body.error;
    document.body.dataset.state = "error";
    return;
  }
  form.elements.namedItem("model").value = body.model;
  await update();
}

async function suggest() {
  const state = document.getElementById("search-state");
  const query = new URLSearchParams();
  for (const key of ["model", "gpu"]) query.set(key, form.elements.namedItem(key).value);
  if (!query.get("gpu")) { state.textContent = "pick a GPU first"; return; }
  state.textContent = "searching…";
  const response = await fetch(`/api/suggest?${query}`);
  const body = await response.json();
  if (!response.ok) { state.textContent = body.error; return; }
  state.textContent = `${body.plans.length} plans that fit, best first`;
  const table = document.getElementById("plans");
  table.hidden = false;
  table.querySelector("tbody").replaceChildren(...body.plans.map((r) => {
    const p = r.plan;
    const tr = document.createElement("tr");
    const cells = [p.method, p.param_dtype, p.method === "full" ? "-" : `r${p.rank} ${p.targets}`, p.seq,
                   `${p.batch}x${p.grad_accum}`, p.grad_ckpt ? "on" : "off", p.optimizer, gib(r.gpu_bytes),
                   r.tokens_per_s];
    tr.append(...cells.map((c) => { const td = document.createElement("td"); td.textContent = c; return td; }));
    return tr;
  }));
}

async function init() {
  document.getElementById("suggest").addEventListener("click", suggest);
  const options = await (await fetch("/api/options")).json();
  buildKnobs(options.knobs);
  document.getElementById("upload").addEventListener("change", upload);
  document.getElementById("models").replaceChildren(...[...options.models, ...options.hub_ids].map((m) => new Option(m)));
  const gpu = form.elements.namedItem("gpu");
  gpu.append(...options.gpus.map((g) => new Option(g)));
  if (!location.search) gpu.value = "rtx4090";
  stateToForm();
  form.addEventListener("change", update);
  await update();
}

init();
