// A run's preflight report (info.preflight, sent by txwatch.preflight before training): one row per check with
// its verdict, figures, likely causes and fix, and the per-module output shapes. run.js calls
// txw.renderPreflight(run) on each refresh; the card stays hidden for a run without a report.
"use strict";

(function () {
  const T = window.txw;
  const { el, fmtNum } = T;

  function figures(f) {
    return Object.entries(f || {}).map(([k, v]) => `${k} ${typeof v === "number" ? fmtNum(v, 4) : String(v)}`).join(", ");
  }

  function advice(c) {
    const lines = [el("div", {}, String(c.summary || ""))];
    for (const x of c.causes || []) lines.push(el("div", { class: "pf-cause" }, el("strong", {}, "likely: "), String(x)));
    for (const x of c.fix || []) lines.push(el("div", { class: "pf-fix" }, el("strong", {}, "fix: "), String(x)));
    return lines;
  }

  function shapes(c) {
    const rows = (c.table || []).filter((r) => r && typeof r === "object");
    if (!rows.length) return null;
    const cols = Object.keys(rows[0]);
    const more = c.table_rows ? ` (the first ${rows.length} of ${c.table_rows} modules)` : "";
    return el("details", { class: "pf-shapes" },
      el("summary", {}, `${c.name}: output shape per module${more}`),
      el("table", { class: "kv" },
        el("tr", {}, ...cols.map((k) => el("th", {}, k))),
        ...rows.map((r) => el("tr", {}, ...cols.map((k) => el("td", {}, String(r[k] ?? "")))))));
  }

  T.renderPreflight = function (run) {
    const card = document.getElementById("card-preflight");
    if (!card) return;
    const report = ((run && run.info) || {}).preflight;
    const checks = report && Array.isArray(report.checks) ? report.checks.filter((c) => c && typeof c === "object") : [];
    card.hidden = !checks.length;
    if (!checks.length) return;
    const failed = checks.filter((c) => c.verdict === "fail").length, warned = checks.filter((c) => c.verdict === "warn").length;
    document.getElementById("preflight-summary").textContent = failed ? `(${failed} failed, ${warned} warn)` : warned ? `(${warned} warn)` : "(all passed)";
    card.open = card.open || failed > 0;
    document.getElementById("preflight-checks").replaceChildren(
      el("tr", {}, el("th", {}, "check"), el("th", {}, "verdict"), el("th", {}, "figures"), el("th", {}, "what it means / fix")),
      ...checks.map((c) => el("tr", { dataset: { check: String(c.name), verdict: String(c.verdict) } },
        el("td", {}, String(c.name)), el("td", { class: `pf-verdict pf-${c.verdict}` }, String(c.verdict)),
        el("td", {}, figures(c.figures)), el("td", {}, ...advice(c)))));
    document.getElementById("preflight-shapes").replaceChildren(...checks.map(shapes).filter(Boolean));
  };
})();
