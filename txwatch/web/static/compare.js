// Runs side by side: loss, validation loss, gradient norm, learning rate and update ratio of two or more runs
// overlaid on one step axis, one colour per run, each run's diagnoses flagged at the step they fired.
// The runs come from the URL: /compare?runs=project/run,project/run (the runs list builds it).
"use strict";

(function () {
  const { api, el, pick, list, fmtNum, runUrl, runApi, severityBadges, diag, showError, clearError } = window.txw;
  const C = window.txwChartsApi;
  const MAX_POINTS = 1000; // per run and series: the server downsamples keeping each bucket's extremes
  const CHARTS = [
    { id: "loss", name: "loss", log: false },
    { id: "val_loss", name: "val_loss", log: false },
    { id: "grad_norm_total", name: "grad_norm_total", log: true },
    { id: "lr", name: "lr/0", log: true },
    { id: "update_ratio_max", name: "update_ratio_max", log: true },
  ];
  const body = document.body;

  function refs() {
    const raw = new URLSearchParams(location.search).getAll("runs").flatMap((v) => v.split(","));
    return [...new Set(raw.map((r) => r.trim()).filter(Boolean))];
  }

  // "project/run", or a bare run name looked up across projects.
  async function resolve(ref) {
    const slash = ref.indexOf("/");
    if (slash > 0) return { project: ref.slice(0, slash), run: ref.slice(slash + 1) };
    const found = list(await api(`/api/v1/runs?${new URLSearchParams({ name: ref, limit: "100" })}`), "runs");
    if (found.length !== 1) throw new Error(found.length ? `run ${ref} is in several projects: name it project/run` : `no run ${ref}`);
    return { project: found[0].project, run: ref };
  }

  async function load(ref, color) {
    const { project, run } = await resolve(ref);
    const [detail, names, ds] = await Promise.all([
      api(runApi(project, run)),
      api(`${runApi(project, run)}/series`),
      api(`/api/v1/diagnoses?${new URLSearchParams({ run: `${project}/${run}` })}`),
    ]);
    const have = new Set(list(names, "series").map((s) => s.name));
    const series = {};
    await Promise.all(CHARTS.filter((c) => have.has(c.name)).map(async (c) => {
      const resp = await api(`${runApi(project, run)}/series/${encodeURIComponent(c.name)}?max_points=${MAX_POINTS}`);
      series[c.name] = list(resp, "points");
    }));
    return { project, run, color, detail, series, diagnoses: list(ds, "diagnoses").map(diag) };
  }

  function summaryRow(r) {
    return el("tr", { dataset: { run: r.run, project: r.project } },
      el("td", { class: "name" }, el("span", { class: "swatch", style: `background:${r.color}` }), " ",
        el("a", { href: runUrl(r.project, r.run) }, r.run)),
      el("td", {}, r.project),
      el("td", {}, el("span", { class: `status status-${pick(r.detail, "status")}` }, pick(r.detail, "status") || "")),
      el("td", { class: "num", dataset: { field: "steps" } }, String(pick(r.detail, "steps") ?? "")),
      el("td", { class: "num", dataset: { field: "last-loss" } }, pick(r.detail, "last_loss") == null ? "" : fmtNum(pick(r.detail, "last_loss"), 4)),
      el("td", { dataset: { field: "firing" } }, severityBadges(pick(r.detail, "firing") || {})));
  }

  // A loss that blew up by orders of magnitude flattens every other run on a linear axis: log then.
  function wideRange(series) {
    const values = series.flatMap((s) => s.points.map((p) => Number(p.value))).filter((v) => Number.isFinite(v) && v > 0);
    return values.length > 1 && Math.max(...values) / Math.min(...values) > 1e3;
  }

  function draw(runs) {
    for (const c of CHARTS) {
      const card = document.getElementById(`cmp-${c.id}`);
      const holder = card.querySelector(".chart-body");
      const present = runs.filter((r) => r.series[c.name] && r.series[c.name].length);
      card.dataset.empty = present.length ? "0" : "1";
      card.querySelector(".empty").hidden = present.length > 0;
      holder.hidden = !present.length;
      if (!present.length) continue;
      const series = present.map((r) => ({ name: `${r.project}/${r.run}`, label: r.run, color: r.color, points: r.series[c.name] }));
      // Each run's diagnoses on every chart, in the run's words: "run: symptom".
      const markers = present.flatMap((r) => r.diagnoses.map((d) => ({ step: d.step, diag: Object.assign({}, d, { symptom: `${r.run}: ${d.symptom}` }) })));
      C.lineChart(holder, series, { id: `cmp:${c.id}`, log: c.log || wideRange(series), markers, height: c.id === "loss" ? 300 : 220 });
    }
  }

  async function main() {
    const wanted = refs();
    document.getElementById("pick-more").hidden = wanted.length >= 2;
    if (wanted.length < 1) {
      body.dataset.loaded = "1";
      return;
    }
    try {
      const runs = await Promise.all(wanted.map((ref, i) => load(ref, C.PALETTE[i % C.PALETTE.length])));
      document.querySelector("#compared tbody").replaceChildren(...runs.map(summaryRow));
      document.title = `${runs.map((r) => r.run).join(" vs ")} · txwatch`;
      draw(runs);
      clearError("errors");
      body.dataset.loaded = "1";
    } catch (err) {
      showError("errors", err);
      body.dataset.error = err.message;
    }
  }

  document.getElementById("reset-zoom").addEventListener("click", () => C.resetZoom());
  main();
})();
