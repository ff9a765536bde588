// The runs list: newest first, filtered by project and status (kept in the URL), polled while open.
"use strict";

(function () {
  const { api, el, pick, list, toDate, fmtNum, fmtTime, fmtAgo, fmtDuration, runUrl, severityBadges, showError, clearError, poll } = window.txw;
  const POLL_MS = 5000;
  const LIMIT = 500;
  const knownProjects = new Set();

  const form = document.getElementById("run-filters");
  const projectSel = document.getElementById("filter-project");
  const statusSel = document.getElementById("filter-status");
  const tbody = document.querySelector("#runs tbody");
  const updated = document.getElementById("updated");
  const compareButton = document.getElementById("compare-selected");
  const picked = new Set(); // "project/run" of the runs ticked for comparison, kept across refreshes

  const params = new URLSearchParams(location.search);
  statusSel.value = params.get("status") || "";
  const wantedProject = params.get("project") || "";
  if (wantedProject) addProject(wantedProject);
  projectSel.value = wantedProject;

  function addProject(p) {
    if (!p || knownProjects.has(p)) return;
    knownProjects.add(p);
    const opts = Array.from(knownProjects).sort();
    const current = projectSel.value;
    projectSel.replaceChildren(el("option", { value: "" }, "all projects"), ...opts.map((o) => el("option", { value: o }, o)));
    projectSel.value = current;
  }

  function syncUrl() {
    const q = new URLSearchParams(location.search); // keeps other parameters (refresh)
    for (const [k, v] of [["project", projectSel.value], ["status", statusSel.value]]) v ? q.set(k, v) : q.delete(k);
    const s = q.toString();
    history.replaceState(null, "", location.pathname + (s ? "?" + s : ""));
  }

  function statusOf(r) {
    const status = pick(r, "status") || "running";
    const reason = pick(r, "end_reason");
    return { status, detail: reason && reason !== status && reason !== "finished" ? reason : "" };
  }

  function row(r) {
    const name = r.name, project = r.project;
    const started = toDate(pick(r, "started")), ended = toDate(pick(r, "ended"));
    const lastSeen = toDate(pick(r, "last_seen"));
    const { status, detail } = statusOf(r);
    const endRef = ended || (status === "running" ? new Date() : lastSeen);
    const duration = started && endRef ? (endRef - started) / 1000 : null;
    const lastLoss = pick(r, "last_loss");
    const firing = pick(r, "firing") || {}; // firing diagnoses by severity, counted by the API
    return el("tr", { dataset: { run: name, project, status } },
      el("td", { class: "name" }, pickBox(project, name), el("a", { href: runUrl(project, name) }, name)),
      el("td", {}, project),
      el("td", {}, el("span", { class: `status status-${status}` }, status), detail ? el("span", { class: "muted" }, ` (${detail})`) : null),
      el("td", { class: "num", dataset: { field: "steps" } }, String(pick(r, "steps") ?? "")),
      el("td", { class: "num", dataset: { field: "last-loss" } }, lastLoss === undefined ? "" : fmtNum(lastLoss, 4)),
      el("td", { dataset: { field: "firing" } }, severityBadges(firing)),
      el("td", { title: started ? fmtAgo(started) : "" }, fmtTime(started)),
      el("td", { class: "num" }, fmtDuration(duration)));
  }

  function pickBox(project, name) {
    const ref = `${project}/${name}`;
    const box = el("input", { type: "checkbox", class: "pick", "aria-label": `compare ${ref}`, dataset: { ref } });
    box.checked = picked.has(ref);
    box.addEventListener("change", (ev) => {
      ev.stopPropagation(); // not a filter change
      box.checked ? picked.add(ref) : picked.delete(ref);
      updateCompare();
    });
    return box;
  }

  function updateCompare() {
    compareButton.disabled = picked.size < 2;
    compareButton.textContent = picked.size ? `Compare selected (${picked.size})` : "Compare selected";
  }

  compareButton.addEventListener("click", () => {
    if (picked.size < 2) return;
    location.href = `${document.body.dataset.base || ""}/compare?${new URLSearchParams({ runs: [...picked].join(",") })}`;
  });

  async function refresh() {
    const q = new URLSearchParams({ limit: String(LIMIT) });
    if (projectSel.value) q.set("project", projectSel.value);
    if (statusSel.value) q.set("status", statusSel.value);
    try {
      const runs = list(await api(`/api/v1/runs?${q}`), "runs");
      runs.forEach((r) => addProject(r.project));
      // The API answers newest first; sort again so the page holds even if a proxy or an old server did not.
      runs.sort((a, b) => (toDate(pick(b, "started")) || 0) - (toDate(pick(a, "started")) || 0));
      tbody.replaceChildren(...runs.map(row));
      document.getElementById("runs").dataset.count = String(runs.length);
      document.getElementById("no-runs").hidden = runs.length > 0;
      updated.textContent = `updated ${fmtTime(new Date())}`;
      clearError("errors");
    } catch (err) {
      showError("errors", err);
    }
  }

  let pollNow = null;
  form.addEventListener("change", () => {
    syncUrl();
    if (pollNow) pollNow();
  });
  form.addEventListener("submit", (ev) => ev.preventDefault());
  pollNow = poll(refresh, POLL_MS);
})();
