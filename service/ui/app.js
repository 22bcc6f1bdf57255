// The iprox-service web page: plain JavaScript against the public API, no build step.
// The API key is entered once and kept in this browser's localStorage (or passed once as
// ?key=..., which is stored and removed from the address bar).
"use strict";

const KEY = "iprox_api_key";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const BINS = 20;
const TOP = 10;
let timer = null;

function apiKey() { return localStorage.getItem(KEY) || ""; }

function takeKeyFromUrl() {
  const url = new URL(window.location.href);
  const key = url.searchParams.get("key");
  if (key) {
    localStorage.setItem(KEY, key);
    url.searchParams.delete("key");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + apiKey() } });
  if (!r.ok) {
    let detail = r.status + " " + r.statusText;
    try { const p = await r.json(); detail = p.title + ": " + p.detail; } catch (_) { /* not JSON */ }
    const err = new Error(detail);
    err.status = r.status;
    throw err;
  }
  return r;
}

async function json(path) { return (await api(path)).json(); }

async function allPages(path, limit, cap) {
  const items = [];
  let cursor = null;
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await json(path + sep + "limit=" + limit + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    items.push(...page.items);
    if (!page.has_more || items.length >= cap) return items;
    cursor = page.next_cursor;
  }
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function fmtTime(iso) { return iso ? new Date(iso).toLocaleString() : "—"; }
function fmtNum(x, digits = 4) {
  if (x === null || x === undefined) return "—";
  if (typeof x !== "number") return String(x);
  return Math.abs(x) >= 1e4 || Number.isInteger(x) ? x.toLocaleString() : x.toPrecision(digits);
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 90) return s.toFixed(s < 10 ? 1 : 0) + " s";
  if (s < 5400) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function progressBar(done, total) {
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
  return el("div", { class: "bar", title: pct.toFixed(0) + "%" }, el("span", { style: "width:" + pct + "%" }));
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function showError(err) {
  const hint = err.status === 401 ? " Enter a valid API key above." : "";
  show(el("p", { class: "error" }, err.message + hint));
}

// ---------------------------------------------------------------------------------- jobs list

async function renderJobs() {
  const page = await json("/jobs?limit=50");
  const rows = page.items.map((j) =>
    el("tr", {},
      el("td", {}, el("a", { href: "#/jobs/" + j.id }, j.id.slice(0, 8))),
      el("td", {}, j.kind),
      el("td", { class: "status " + j.status }, j.status),
      el("td", {}, j.stage || "—"),
      el("td", {}, progressBar(j.progress.done, j.progress.total),
        el("span", { class: "muted" }, " " + j.progress.done + "/" + j.progress.total + " " + (j.progress.unit || ""))),
      el("td", {}, Object.entries(j.metadata).map(([k, v]) => k + "=" + v).join(", ")),
      el("td", {}, fmtTime(j.created_at))));
  show(
    el("h1", {}, "Jobs"),
    rows.length
      ? el("table", { id: "jobs" },
          el("thead", {}, el("tr", {}, ["Job", "Kind", "Status", "Stage", "Progress", "Labels", "Created"].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows))
      : el("p", { class: "muted" }, "No jobs yet for this API key."),
    page.has_more ? el("p", { class: "muted" }, "Showing the newest 50.") : null);
  return true; // keep refreshing
}

// ------------------------------------------------------------------------------------ job page

function timeline(job, events) {
  const marks = events.filter((e) => e.type === "stage").map((e) => ({ name: e.message, at: new Date(e.created_at) }));
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  const items = marks.map((m, i) => {
    const until = i + 1 < marks.length ? marks[i + 1].at : end;
    return el("li", {}, el("span", {}, m.name), el("span", { class: "muted" }, m.at.toLocaleTimeString()),
      el("span", { class: "num" }, fmtSeconds((until - m.at) / 1000)));
  });
  const statuses = events.filter((e) => e.type === "status").map((e) =>
    el("li", {}, el("span", { class: "status " + e.message.split(" ")[0] }, e.message.split(" ")[0]),
      el("span", { class: "muted" }, new Date(e.created_at).toLocaleTimeString()), el("span", {}, "")));
  return el("div", { class: "card" }, el("h2", {}, "Stage timeline"),
    el("ul", { class: "timeline", id: "timeline" }, items.length ? items : el("li", { class: "muted" }, "No stage yet.")),
    el("h2", { style: "margin-top:.8rem" }, "Status"), el("ul", { class: "timeline" }, statuses));
}

function progressCard(job, events) {
  const last = [...events].reverse().find((e) => e.type === "progress" && e.stage === job.stage);
  const data = last ? last.data : null;
  const metrics = data && data.metrics ? Object.entries(data.metrics) : [];
  const alignment = events.filter((e) => e.type === "progress" && e.stage === "aligning" && e.data && e.data.metrics);
  return el("div", { class: "card", id: "progress" }, el("h2", {}, "Progress"),
    el("dl", {},
      el("dt", {}, "Status"), el("dd", { class: "status " + job.status }, job.status + (job.partial ? " (partial)" : "")),
      el("dt", {}, "Stage"), el("dd", {}, job.stage || "—"),
      el("dt", {}, "Done"), el("dd", {}, job.progress.done + " / " + job.progress.total + " " + (job.progress.unit || "")),
      el("dt", {}, "Rate"), el("dd", {}, data && data.rate_per_s ? fmtNum(data.rate_per_s, 3) + " " + data.unit + "/s" : "—"),
      el("dt", {}, "ETA"), el("dd", {}, TERMINAL.has(job.status) ? "—" : fmtSeconds(data ? data.eta_s : null)),
      metrics.map(([k, v]) => [el("dt", {}, k), el("dd", {}, fmtNum(v))]),
      job.error ? [el("dt", {}, "Error"), el("dd", { class: "error" }, "[" + job.error.code + "] " + job.error.message)] : null),
    progressBar(job.progress.done, job.progress.total),
    alignment.length
      ? el("table", { style: "margin-top:.6rem" },
          el("thead", {}, el("tr", {}, ["step", "L_GA", "KL"].map((h) => el("th", { class: "num" }, h)))),
          el("tbody", {}, alignment.map((e) => el("tr", {},
            ["step", "L_GA", "KL"].map((k) => el("td", { class: "num" }, fmtNum(e.data.metrics[k])))))))
      : null);
}

function histogram(scores) {
  const card = el("div", { class: "card" }, el("h2", {}, "Scores (" + scores.length + ")"));
  if (!scores.length) { card.append(el("p", { class: "muted" }, "No scores yet.")); return card; }
  const values = scores.map((s) => s.score);
  const lo = Math.min(...values), hi = Math.max(...values);
  const width = (hi - lo) || 1;
  const counts = new Array(BINS).fill(0);
  for (const v of values) counts[Math.min(BINS - 1, Math.floor(((v - lo) / width) * BINS))] += 1;
  const W = 420, H = 160, pad = 24, bw = (W - 2 * pad) / BINS, top = Math.max(...counts);
  const svg = svgEl("svg", { class: "histogram", id: "histogram", viewBox: "0 0 " + W + " " + (H + 20), width: "100%", role: "img",
    "aria-label": "Histogram of " + values.length + " scores" });
  counts.forEach((c, i) => {
    const h = top ? ((H - pad) * c) / top : 0;
    const rect = svgEl("rect", { class: "bin", x: pad + i * bw + 1, y: H - h, width: Math.max(bw - 2, 1), height: h, "data-count": c });
    const tip = svgEl("title", {});
    tip.textContent = c + " in [" + (lo + (i * width) / BINS).toPrecision(3) + ", " + (lo + ((i + 1) * width) / BINS).toPrecision(3) + ")";
    rect.append(tip);
    svg.append(rect);
  });
  svg.append(svgEl("line", { x1: pad, y1: H, x2: W - pad, y2: H, stroke: "#687083" }));
  for (const [x, label, anchor] of [[pad, lo, "start"], [W - pad, hi, "end"]]) {
    const t = svgEl("text", { x, y: H + 14, "text-anchor": anchor });
    t.textContent = label.toPrecision(3);
    svg.append(t);
  }
  const t = svgEl("text", { x: pad, y: 12 });
  t.textContent = "max " + top + " per bin";
  svg.append(t);
  card.append(svg);
  return card;
}

function recordText(r) {
  const skip = new Set(["id", "rank", "score"]);
  const text = Object.entries(r).filter(([k]) => !skip.has(k)).map(([, v]) => typeof v === "string" ? v : JSON.stringify(v)).join(" · ");
  return text.length > 140 ? text.slice(0, 140) + "…" : text;
}

function topRecords(job, subset) {
  const card = el("div", { class: "card" }, el("h2", {}, "Top records"));
  if (subset === null) {
    card.append(el("p", { class: "muted" }, job.kind === "select" ? "The subset is ready once the job succeeds." : "A proxy build selects nothing."));
    return card;
  }
  card.append(el("table", { id: "top-records" },
    el("thead", {}, el("tr", {}, el("th", { class: "num" }, "rank"), el("th", {}, "id"), el("th", { class: "num" }, "score"), el("th", {}, "record"))),
    el("tbody", {}, subset.map((r) => el("tr", {},
      el("td", { class: "num" }, r.rank), el("td", {}, r.id === undefined ? "" : String(r.id)),
      el("td", { class: "num" }, fmtNum(r.score)), el("td", {}, recordText(r)))))));
  return card;
}

function proxyCard(proxy) {
  const card = el("div", { class: "card", id: "proxy" }, el("h2", {}, "Proxy"));
  if (!proxy) { card.append(el("p", { class: "muted" }, "No proxy yet.")); return card; }
  const m = proxy.manifest || {};
  const errors = (m.layers || []).map((l) => l.weighted_error).filter((x) => typeof x === "number");
  const mean = errors.length ? errors.reduce((a, b) => a + b, 0) / errors.length : null;
  const align = m.alignment || {};
  const first = align.first || {}, last = align.last || {};
  card.append(el("dl", {},
    el("dt", {}, "id"), el("dd", {}, el("code", {}, proxy.id)),
    el("dt", {}, "method"), el("dd", {}, proxy.method + ", sparsity " + proxy.sparsity),
    el("dt", {}, "parameters"), el("dd", {}, fmtNum(m.proxy_params) + " of " + fmtNum(m.target_params) +
      (m.param_ratio ? " (" + (100 * m.param_ratio).toFixed(1) + "%)" : "")),
    el("dt", {}, "layers"), el("dd", {}, fmtNum(m.compressed_layers) + " low-rank, " + fmtNum(m.dense_layers) + " dense"),
    el("dt", {}, "weighted error"), el("dd", {}, errors.length ? "mean " + fmtNum(mean, 3) + ", max " + fmtNum(Math.max(...errors), 3) : "—"),
    el("dt", {}, "alignment"), el("dd", {}, align.steps ? align.steps + " steps; L_GA " + fmtNum(first.ga, 3) + " → " + fmtNum(last.ga, 3) +
      ", KL " + fmtNum(first.kl, 3) + " → " + fmtNum(last.kl, 3) : "none"),
    el("dt", {}, "build time"), el("dd", {}, m.timings_s ? fmtSeconds(m.timings_s.total) : "—")));
  return card;
}

async function download(path, name) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function downloads(job) {
  const links = [];
  const add = (label, path, name) => {
    const a = el("a", { href: path, "data-download": name }, label);
    a.addEventListener("click", (ev) => { ev.preventDefault(); download(path, name).catch(showError); });
    links.push(a);
  };
  if (job.kind === "select" && job.status === "succeeded") {
    add("subset (JSONL)", job.links.subset + "?format=jsonl", "subset-" + job.id + ".jsonl");
    add("subset (JSON)", job.links.subset + "?format=json", "subset-" + job.id + ".json");
  }
  if (job.kind === "select") add("scores (JSON page)", job.links.scores + "?limit=1000", "scores-" + job.id + ".json");
  add("events (JSON)", job.links.events + "?limit=1000", "events-" + job.id + ".json");
  if (job.proxy_id) add("proxy manifest (JSON)", "/proxies/" + job.proxy_id, "proxy-" + job.proxy_id + ".json");
  return el("div", { class: "card downloads", id: "downloads" }, el("h2", {}, "Downloads"), links);
}

async function renderJob(id) {
  const job = await json("/jobs/" + encodeURIComponent(id));
  const [events, scores, subset, proxy] = await Promise.all([
    allPages(job.links.events, 1000, 20000),
    job.kind === "select" ? allPages(job.links.scores, 1000, 100000) : Promise.resolve([]),
    job.kind === "select" && job.status === "succeeded"
      ? json(job.links.subset + "?format=json&top_k=" + TOP) : Promise.resolve(null),
    job.proxy_id ? json("/proxies/" + job.proxy_id).catch(() => null) : Promise.resolve(null),
  ]);
  show(
    el("h1", {}, "Job ", el("code", {}, job.id), " ", el("span", { class: "status " + job.status }, job.status)),
    el("p", { class: "muted" }, job.kind + " of " + (job.request.target_model || "?") + ", submitted " + fmtTime(job.created_at)),
    el("div", { class: "grid" }, progressCard(job, events), timeline(job, events), histogram(scores),
      topRecords(job, subset), proxyCard(proxy), downloads(job)));
  return !TERMINAL.has(job.status);
}

// ------------------------------------------------------------------------------------- routing

async function route() {
  clearTimeout(timer);
  if (!apiKey()) {
    show(el("p", { class: "muted" }, "Enter an API key above; it is kept in this browser only."));
    return;
  }
  const m = window.location.hash.match(/^#\/jobs\/([^/?#]+)/);
  try {
    const again = m ? await renderJob(decodeURIComponent(m[1])) : await renderJobs();
    document.body.dataset.ready = "1";
    if (again) timer = setTimeout(route, 3000);
  } catch (err) {
    showError(err);
    document.body.dataset.ready = "error";
  }
}

function setUpKeyForm() {
  const form = document.getElementById("key-form");
  const forget = document.getElementById("forget");
  forget.hidden = !apiKey();
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = document.getElementById("key");
    if (input.value.trim()) localStorage.setItem(KEY, input.value.trim());
    input.value = "";
    forget.hidden = !apiKey();
    route();
  });
  forget.addEventListener("click", () => { localStorage.removeItem(KEY); forget.hidden = true; route(); });
}

takeKeyFromUrl();
setUpKeyForm();
window.addEventListener("hashchange", route);
route();
