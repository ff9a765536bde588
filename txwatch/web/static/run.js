// One run: header, diagnoses, config, and the charts (loss with diagnosis markers, learning rate, gradient
// norm, per-layer heatmaps, update ratios, system figures, step time). Series come downsampled from the
// server (max_points), so a run of millions of points loads as fast as a short one; zooming in fetches the
// zoomed window at full detail.
"use strict";

(function () {
  const T = window.txw;
  const { api, el, pick, list, toDate, fmtNum, fmtTime, fmtAgo, fmtDuration, runApi, runUrl, diag, diagnosisDetail, showError, clearError, poll } = T;
  const C = window.txwChartsApi;
  const H = window.txwHeatmap;

  const MAX_POINTS = 2000; // per series and request (the API's default): a min/max pair per pixel column
  const HEATMAP_STEPS = 200; // columns of the per-layer heatmaps
  const POLL_MS = 10000; // a live run's page refreshes this often
  const MAX_LINES = 8; // per chart; more groups/devices than this would be unreadable anyway
  const BUILTIN = new Set(["loss", "val_loss", "grad_norm_total", "grad_nonfinite", "update_ratio_max", "step_time", "data_wait", "data_wait_share", "cpu_util", "rss"]);
  const LAYER_PREFIXES = new Set(["grad_norm", "param_norm", "update_ratio", "lr", "gpu_util", "gpu_mem_used", "gpu_mem_total", "cuda_mem_allocated", "cuda_mem_reserved", "cuda_mem_peak", "preflight"]);  // preflight/<check>: the Preflight card shows them

  const body = document.body;
  const state = { project: body.dataset.project, run: body.dataset.run, status: null, window: null, seriesNames: [], diagnoses: [], incidents: [] };

  // ---------- loading ----------

  async function resolveProject() {
    if (state.project) return;
    const q = new URLSearchParams({ name: state.run, limit: "100" });
    const runs = list(await api(`/api/v1/runs?${q}`), "runs").filter((r) => r.name === state.run);
    if (runs.length === 1) {
      state.project = runs[0].project;
      history.replaceState(null, "", runUrl(state.project, state.run));
      return;
    }
    const msg = runs.length
      ? `More than one run is named ${state.run}: ${runs.map((r) => pick(r, "project")).join(", ")}. Open it as /runs/PROJECT/${state.run}.`
      : `No run named ${state.run}.`;
    throw new Error(msg);
  }

  // The API's series list -> [{name, points}].
  function seriesIndex(resp) {
    return list(resp, "series").map((s) => ({ name: s.name, points: s.points }));
  }

  async function fetchSeries(name, maxPoints = MAX_POINTS) {
    const q = new URLSearchParams({ max_points: String(maxPoints) });
    if (state.window) {
      q.set("start", String(Math.floor(state.window[0])));
      q.set("end", String(Math.ceil(state.window[1])));
    }
    const resp = await api(`${runApi(state.project, state.run)}/series/${encodeURIComponent(name)}?${q}`);
    const points = list(resp, "points");
    return { points, total: pick(resp, "total") ?? points.length, downsampled: !!pick(resp, "downsampled") };
  }

  // name -> {points, total, downsampled}
  async function fetchMany(names, maxPoints) {
    const out = {};
    await Promise.all(names.map(async (n) => (out[n] = await fetchSeries(n, maxPoints))));
    return out;
  }

  function samplingNote(holder, data) {
    const thinned = Object.values(data).filter((d) => d.downsampled);
    holder.dataset.downsampled = thinned.length ? "1" : "0";
    const note = holder.querySelector(".sampling");
    if (!note) return;
    if (!thinned.length) {
      note.textContent = "";
      return;
    }
    const shown = thinned.reduce((a, d) => a + d.points.length, 0), total = thinned.reduce((a, d) => a + d.total, 0);
    note.textContent = `${shown.toLocaleString()} of ~${total.toLocaleString()} points (min/max per bucket); drag to zoom in for every point`;
  }

  // ---------- header, config, diagnoses ----------

  function renderHeader(r) {
    const status = pick(r, "status") || "running";
    state.status = status;
    document.title = `${state.run} · ${state.project} · txwatch`;
    document.getElementById("run-title").textContent = state.run;
    const st = document.getElementById("run-status");
    st.className = `status status-${status}`;
    st.textContent = status;
    body.dataset.status = status;
    const started = toDate(pick(r, "started")), ended = toDate(pick(r, "ended")), lastSeen = toDate(pick(r, "last_seen"));
    const endRef = ended || (status === "running" ? new Date() : lastSeen);
    const info = pick(r, "info") || {};
    const rows = [
      ["project", el("a", { href: `${T.base}/?project=${encodeURIComponent(state.project)}` }, state.project)],
      ["steps", String(pick(r, "steps") ?? "")],
      ["started", fmtTime(started)],
      [ended ? "ended" : "last seen", ended ? fmtTime(ended) : lastSeen ? `${fmtTime(lastSeen)} (${fmtAgo(lastSeen)})` : ""],
      ["duration", started && endRef ? fmtDuration((endRef - started) / 1000) : ""],
      ["host", pick(r, "host") || ""],
      ["device", pick(info, "device") || ""],
      ["world size", String(pick(info, "world_size") ?? "")],
      ["torch", pick(info, "torch_version") || ""],
    ];
    const end = pick(r, "end_reason");
    if (end && end !== "finished" && end !== status) rows.push(["ended by", end]);
    const meta = document.getElementById("run-meta");
    meta.replaceChildren(...rows.filter(([, v]) => v !== "").flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, v)]));
    const errType = pick(r, "error.type"), errMsg = pick(r, "error.message");
    const errBox = document.getElementById("run-error");
    errBox.hidden = !errType;
    if (errType) errBox.replaceChildren(el("strong", {}, errType), errMsg ? `: ${errMsg}` : "");
  }

  function flatten(obj, prefix = "", out = []) {
    for (const [k, v] of Object.entries(obj || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flatten(v, key, out);
      else out.push([key, v]);
    }
    return out;
  }

  function renderConfig(r) {
    const config = pick(r, "config") || {};
    const rows = flatten(config);
    const table = document.getElementById("run-config");
    table.replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, typeof v === "number" ? fmtNum(v, 6) : JSON.stringify(v)))));
    document.getElementById("config-empty").hidden = rows.length > 0;
    document.getElementById("config-count").textContent = rows.length ? `(${rows.length})` : "";
  }

  // Incidents: the diagnoses that overlapped in time, led by the root cause (the causal order of docs/rules.md)
  // and its fix, the rest listed as its consequences. A click on a rule opens its diagnosis below.
  function renderIncidents() {
    const box = document.getElementById("run-incidents");
    const step = (s) => (s === null || s === undefined ? "" : `step ${s}`);
    const ruleLink = (e) => el("a", { href: `#diag-${e.id}`, class: "rule-link", onclick: () => openDiagnosis({ id: e.id }) },
      el("code", { class: "rule" }, e.rule), e.layer ? el("code", { class: "layer" }, e.layer) : null);
    const members = (cls, label, eps) => (eps || []).length ? el("p", { class: cls }, el("b", {}, label),
      ...eps.flatMap((e, i) => [i ? ", " : "", ruleLink(e), el("span", { class: "muted" }, ` ${step(e.first_step)}`)])) : null;
    box.replaceChildren(...state.incidents.map((inc) => {
      const p = inc.primary;
      const span = inc.state === "ended" ? `steps ${inc.first_step}-, unresolved when the run ended`
        : inc.state === "open" ? `since step ${inc.first_step}, open` : `steps ${inc.first_step}-${inc.resolved_step}, resolved`;
      return el("div", { class: `incident sev-border-${inc.severity}`, dataset: { number: String(inc.number), primary: p ? p.rule : "", state: inc.state } },
        el("div", { class: "incident-head" },
          el("span", { class: `badge sev-${inc.severity}` }, inc.severity),
          el("strong", {}, ` Incident ${inc.number}`),
          el("span", { class: "muted" }, ` ${span}`)),
        p ? el("p", { class: "incident-cause" }, el("b", {}, "Root cause: "), ruleLink(p), el("span", { class: "muted" }, ` ${step(p.first_step)}`), " ", p.reason) : null,
        inc.note ? el("p", { class: "incident-note muted" }, inc.note) : null,
        inc.fix.length ? el("div", { class: "fix" }, el("b", {}, "Fix first:"), el("ol", {}, inc.fix.map((f) => el("li", {}, typeof f === "string" ? f : JSON.stringify(f))))) : null,
        members("incident-consequences", "Consequences: ", inc.consequences),
        members("incident-concurrent", "Also open, not explained by it: ", inc.concurrent));
    }));
    box.hidden = state.incidents.length === 0;
  }

  // One line per diagnosis (most serious first); a click opens its symptom, cause, fix and evidence.
  function renderDiagnoses() {
    const box = document.getElementById("run-diagnoses");
    const ds = state.diagnoses;
    const firing = ds.filter((d) => d.state === "firing");
    const ended = ds.filter((d) => d.state === "ended");
    const open = firing.length ? firing : ended;
    document.getElementById("diag-summary").replaceChildren(
      ds.length ? T.severityBadges(countBy(open)) : "",
      ds.length ? el("span", { class: "muted" }, ` ${firing.length} firing, ${ended.length ? `${ended.length} still firing when the run ended, ` : ""}${ds.length} in all`)
        : el("span", { class: "muted" }, "none"));
    const opened = new Set(Array.from(box.querySelectorAll("details[open]")).map((n) => n.id));
    const rank = (d) => (d.state === "firing" || d.state === "ended" ? 0 : d.state === "pending" ? 1 : 2) * 10 + T.SEVERITIES.indexOf(d.severity);
    const sorted = [...ds].sort((a, b) => rank(a) - rank(b) || (a.step ?? 0) - (b.step ?? 0));
    box.replaceChildren(...sorted.map((d) => {
      const item = el("details", { class: `diag-item row-${d.state}`, id: `diag-${d.id}`, open: opened.has(`diag-${d.id}`),
        dataset: { rule: d.rule || "", step: String(d.step ?? ""), state: d.state, severity: d.severity } },
        el("summary", {},
          el("span", { class: `badge sev-${d.severity}` }, d.severity),
          el("code", { class: "rule" }, d.rule || ""),
          d.layer ? el("code", { class: "layer" }, d.layer) : null,
          el("span", { class: "muted step" }, d.step !== null && d.step !== undefined ? `step ${d.step}` : ""),
          el("span", { class: `state state-${d.state}` }, d.state),
          el("span", { class: "symptom" }, d.symptom)),
        diagnosisDetail(d));
      return item;
    }));
  }

  function countBy(ds) {
    const c = {};
    ds.forEach((d) => (c[d.severity] = (c[d.severity] || 0) + 1));
    return c;
  }

  // ---------- marker popover ----------

  const pop = document.getElementById("diag-popover");
  let pinned = false;
  function onMarker(d, node, pin) {
    if (pinned && !pin) return;
    pinned = pin;
    pop.replaceChildren(
      el("button", { class: "close", type: "button", "aria-label": "close", onclick: hidePopover }, "×"),
      diagnosisDetail(d),
      el("a", { href: `#diag-${d.id}`, class: "muted", onclick: () => openDiagnosis(d) }, "in the list above"));
    pop.dataset.rule = d.rule || "";
    pop.dataset.step = String(d.step ?? "");
    pop.hidden = false;
    const r = node.getBoundingClientRect();
    const w = Math.min(440, window.innerWidth - 20);
    pop.style.width = `${w}px`;
    pop.style.left = `${Math.max(10, Math.min(window.scrollX + r.left - w / 2, window.scrollX + window.innerWidth - w - 10))}px`;
    pop.style.top = `${window.scrollY + r.bottom + 6}px`;
    if (pin) {
      document.querySelectorAll(".diag-item.highlight").forEach((n) => n.classList.remove("highlight"));
      const item = document.getElementById(`diag-${d.id}`);
      if (item) item.classList.add("highlight");
    }
    if (!pin) node.addEventListener("mouseleave", () => !pinned && hidePopover(), { once: true });
  }
  function openDiagnosis(d) {
    const item = document.getElementById(`diag-${d.id}`);
    if (item) item.open = true;
    hidePopover();
  }
  function hidePopover() {
    pinned = false;
    pop.hidden = true;
  }
  document.addEventListener("keydown", (ev) => ev.key === "Escape" && hidePopover());
  document.addEventListener("click", (ev) => pinned && !pop.contains(ev.target) && hidePopover());

  // ---------- charts ----------

  function layerPrefix(name) {
    const base = name.split("/")[0];
    return base.replace(/^rank\d+\./, "");
  }
  function namesWith(prefix) {
    return state.seriesNames.filter((n) => n.includes("/") && layerPrefix(n) === prefix).slice(0, MAX_LINES);
  }
  function markersFor(pattern) {
    return state.diagnoses.filter((d) => !pattern || pattern.test(d.rule || "")).map((d) => ({ step: d.step, diag: d }));
  }

  function card(id) {
    return document.getElementById(id);
  }
  function setEmpty(id, empty, text) {
    const c = card(id);
    c.dataset.empty = empty ? "1" : "0";
    c.querySelector(".empty").hidden = !empty;
    if (text) c.querySelector(".empty").textContent = text;
    c.querySelector(".chart-body").hidden = empty;
  }

  async function drawLines(cardId, chartId, specs, opts = {}) {
    const names = specs.map((s) => s.name).filter((n) => state.seriesNames.includes(n));
    if (!names.length) {
      setEmpty(cardId, true);
      return;
    }
    setEmpty(cardId, false);
    const holder = card(cardId).querySelector(".chart-body");
    holder.dataset.maxPoints = String(MAX_POINTS);
    const data = await fetchMany(names, MAX_POINTS);
    const series = specs.filter((s) => names.includes(s.name)).map((s) => Object.assign({ label: s.label || s.name, points: data[s.name].points }, s));
    const chosen = logChoice.get(cardId);
    const log = chosen !== undefined ? chosen : opts.log !== undefined ? opts.log : wideRange(series);
    drawn.set(cardId, { holder, series, opts: Object.assign({ id: chartId, onMarker }, opts) });
    C.lineChart(holder, series, Object.assign({ id: chartId, onMarker }, opts, { log }));
    logToggle(cardId, log);
    samplingNote(card(cardId), data);
  }

  // A diverging loss spans 1 to 1e30: on a linear axis everything before the blow-up is a flat line, so such
  // a chart starts on a log axis. Each chart has a "log" box to change it; the choice sticks while the page is open.
  const logChoice = new Map(); // card id -> bool, the user's choice
  const drawn = new Map(); // card id -> {holder, series, opts}: redraw without refetching
  function wideRange(series) {
    let lo = Infinity, hi = -Infinity;
    for (const s of series)
      for (const p of s.points) {
        const v = T.num(p.value);
        if (!Number.isFinite(v)) continue;
        if (v <= 0) return false;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
    return hi / lo > 1e4;
  }
  function logToggle(cardId, log) {
    const h2 = card(cardId).querySelector("h2");
    let box = h2.querySelector("input.log");
    if (!box) {
      box = el("input", { type: "checkbox", class: "log" });
      box.addEventListener("change", () => {
        logChoice.set(cardId, box.checked);
        const d = drawn.get(cardId);
        if (d) C.lineChart(d.holder, d.series, Object.assign({}, d.opts, { log: box.checked }));
      });
      h2.append(el("label", { class: "log-toggle", title: "logarithmic y axis" }, box, " log"));
    }
    box.checked = log;
  }

  async function drawHeatmap(cardId, metric, unit) {
    const has = state.seriesNames.some((n) => n.includes("/") && layerPrefix(n) === metric);
    if (!has) {
      setEmpty(cardId, true);
      return;
    }
    setEmpty(cardId, false);
    const q = new URLSearchParams({ metric, max_steps: String(HEATMAP_STEPS) });
    const resp = await api(`${runApi(state.project, state.run)}/layers?${q}`);
    H.heatmap(card(cardId).querySelector(".chart-body"), resp, { unit });
  }

  async function drawUtil() {
    const gpuUtil = namesWith("gpu_util");
    card("card-util").querySelector("h2 .title").textContent = gpuUtil.length ? "GPU utilization" : "CPU utilization";
    const specs = gpuUtil.length ? gpuUtil.map((n) => ({ name: n, unit: "%" })) : [{ name: "cpu_util", unit: "%" }];
    await drawLines("card-util", "util", specs, { markers: markersFor(/slow-training/) });
  }

  async function drawMem() {
    const mem = [...namesWith("gpu_mem_used"), ...namesWith("cuda_mem_allocated"), ...namesWith("cuda_mem_reserved")];
    card("card-mem").querySelector("h2 .title").textContent = mem.length ? "GPU memory" : "Process memory (RSS)";
    const totals = namesWith("gpu_mem_total").map((n) => ({ name: n, unit: "bytes", dash: [6, 4], color: "#6e7681" }));
    const specs = mem.length ? [...mem.map((n) => ({ name: n, unit: "bytes" })), ...totals].slice(0, MAX_LINES) : [{ name: "rss", unit: "bytes" }];
    await drawLines("card-mem", "mem", specs, { markers: markersFor(/memory/) });
  }

  async function drawOthers() {
    const box = document.getElementById("other-charts");
    const groups = new Map();
    for (const n of state.seriesNames) {
      const isLayer = n.includes("/");
      const key = isLayer ? layerPrefix(n) : n;
      if ((!isLayer && BUILTIN.has(n)) || (isLayer && LAYER_PREFIXES.has(key)) || /^rank\d+\./.test(n)) continue;
      if (!groups.has(key)) groups.set(key, []);
      if (groups.get(key).length < MAX_LINES) groups.get(key).push(n);
    }
    card("card-other").hidden = groups.size === 0;
    for (const [key, names] of groups) {
      let holder = box.querySelector(`[data-metric="${CSS.escape(key)}"]`);
      if (!holder) {
        holder = el("div", { class: "mini", dataset: { metric: key } }, el("h3", {}, key), el("div", { class: "chart-body" }));
        box.append(holder);
      }
      const data = await fetchMany(names, MAX_POINTS);
      C.lineChart(holder.querySelector(".chart-body"), names.map((n) => ({ name: n, label: n, points: data[n].points })), { id: `other:${key}`, height: 180 });
    }
  }

  // Each chart: the card it fills, and how.
  function chartJobs() {
    const lr = namesWith("lr");
    const jobs = [
      ["card-loss", () => drawLines("card-loss", "loss", [{ name: "loss" }, { name: "val_loss", color: "#f28e2b" }], { markers: markersFor(null), height: 300 })],
      ["card-lr", () => drawLines("card-lr", "lr", lr.map((n) => ({ name: n })), { markers: markersFor(/warmup/) })],
      ["card-grad", () => drawLines("card-grad", "grad", [{ name: "grad_norm_total" }], { log: true, band: [1e-4, 1e1], markers: markersFor(/gradient|vanishing|dead-layer|nonfinite/) })],
      ["card-update", () => drawLines("card-update", "update", [{ name: "update_ratio_max" }], { log: true, band: [1e-4, 1e-2], markers: markersFor(/update-ratio/) })],
      ["card-steptime", () => drawLines("card-steptime", "steptime", [{ name: "step_time", unit: "s" }, { name: "data_wait_share", label: "data-wait share", unit: "share", color: "#e15759" }], { markers: markersFor(/slow-training/) })],
      ["card-util", drawUtil],
      ["card-mem", drawMem],
      ["card-other", drawOthers],
    ];
    if (!state.window) {
      // The heatmaps always show the whole run (their own max_steps buckets); zooming does not refetch them.
      jobs.push(["card-heat-grad", () => drawHeatmap("card-heat-grad", "grad_norm")], ["card-heat-update", () => drawHeatmap("card-heat-update", "update_ratio")]);
    }
    return jobs;
  }

  async function runJobs(jobs) {
    const results = await Promise.allSettled(jobs.map(([, draw]) => draw()));
    const failed = results.find((r) => r.status === "rejected");
    if (failed) throw failed.reason;
  }

  function onScreen(id) {
    const r = card(id).getBoundingClientRect();
    return r.top < window.innerHeight && r.bottom > 0;
  }

  // Opening: the charts on the first screen load first, so the page is readable as soon as they arrive (a
  // run of millions of points costs the server a downsampled read per series); the rest follow at once, so
  // they are ready by the time anyone scrolls. Cards keep their size while empty, so "on screen" is stable.
  // Later refreshes (live polling, zooming) redraw what is on screen and mark the rest stale; a stale card
  // is redrawn when it scrolls into view. An open page thus costs the server a few reads per poll, not all.
  const stale = new Set();
  const seen = new IntersectionObserver((entries) => {
    const due = entries.filter((e) => e.isIntersecting && stale.has(e.target.id)).map((e) => e.target.id);
    if (!due.length) return;
    due.forEach((id) => stale.delete(id));
    runJobs(chartJobs().filter(([id]) => due.includes(id))).catch((err) => showError("errors", err));
  });
  document.querySelectorAll(".charts > .card").forEach((c) => seen.observe(c));

  async function drawCharts({ opening = false } = {}) {
    const jobs = chartJobs();
    const now = jobs.filter(([id]) => onScreen(id));
    const later = jobs.filter((j) => !now.includes(j));
    await runJobs(now);
    if (opening) {
      body.dataset.firstMs = performance.now().toFixed(1);
      await runJobs(later);
    } else {
      later.forEach(([id]) => stale.add(id));
    }
  }

  async function refresh() {
    try {
      await resolveProject();
      const base = runApi(state.project, state.run);
      const dq = new URLSearchParams({ project: state.project, run: state.run });
      const [r, idx, ds, inc] = await Promise.all([api(base), api(`${base}/series`), api(`/api/v1/diagnoses?${dq}`),
        api(`${base}/incidents`)]);
      renderHeader(r);
      renderConfig(r);
      T.renderPreflight(r);
      state.seriesNames = seriesIndex(idx).map((s) => s.name).sort();
      state.diagnoses = list(ds, "diagnoses").map(diag).sort((a, b) => (a.step ?? 0) - (b.step ?? 0));
      state.incidents = list(inc, "incidents");
      renderDiagnoses();
      renderIncidents();
      await drawCharts({ opening: !body.dataset.loaded });
      // Milliseconds from navigation to every chart drawn, for the page-load benchmark.
      if (!body.dataset.loaded) body.dataset.loadMs = performance.now().toFixed(1);
      body.dataset.loaded = String(Number(body.dataset.loaded || 0) + 1);
      document.getElementById("updated").textContent = `updated ${fmtTime(new Date())}`;
      clearError("errors");
    } catch (err) {
      showError("errors", err);
      body.dataset.error = err.message;
    }
  }

  // Zooming in fetches the window at full detail (the overview was downsampled); zooming out refetches it all.
  let zoomTimer = null;
  C.onZoom((min, max) => {
    clearTimeout(zoomTimer);
    zoomTimer = setTimeout(async () => {
      state.window = min == null ? null : [min, max];
      try {
        await drawCharts();
      } catch (err) {
        showError("errors", err);
      }
    }, 250);
  });
  document.getElementById("reset-zoom").addEventListener("click", C.resetZoom);

  let first = true;
  poll(async () => {
    // A finished or crashed run does not change any more: load it once.
    if (!first && state.status && !["running", "stalled"].includes(state.status)) return;
    first = false;
    await refresh();
  }, POLL_MS);
})();
