// All diagnoses across runs (filters kept in the URL), the silences, and a form to add or remove one.
"use strict";

(function () {
  const T = window.txw;
  const { api, el, list, pick, toDate, fmtTime, fmtAgo, runUrl, diag, diagnosisDetail, showError, clearError, poll } = T;
  const POLL_MS = 10000;
  const FILTERS = ["project", "run", "rule", "severity", "state"];

  const filterForm = document.getElementById("diag-filters");
  const diagBody = document.querySelector("#diagnoses tbody");
  const silBody = document.querySelector("#silences tbody");
  const silForm = document.getElementById("silence-form");
  const silMsg = document.getElementById("silence-message");

  const params = new URLSearchParams(location.search);
  for (const f of FILTERS) filterForm.elements[f].value = params.get(f) || "";

  function filterQuery() {
    const q = new URLSearchParams();
    for (const f of FILTERS) {
      const v = filterForm.elements[f].value.trim();
      if (v) q.set(f, v);
    }
    return q;
  }

  function prefillSilence(d) {
    silForm.elements.project.value = d.project || "";
    silForm.elements.run.value = d.run || "";
    silForm.elements.rule.value = d.rule || "";
    silForm.elements.comment.focus();
    silForm.scrollIntoView({ block: "center" });
  }

  // The active silence that covers a diagnosis, by the rule the collector applies (every field it names
  // is equal; an unnamed field matches anything).
  function silenceFor(d, silences) {
    return silences.find((x) => {
      const sp = pick(x, "project"), sr = pick(x, "run"), rule = pick(x, "rule");
      return pick(x, "active") !== false && (!sp || sp === d.project) && (!sr || sr === d.run) && (!rule || rule === d.rule);
    });
  }

  function diagRows(d, silences) {
    const silence = silenceFor(d, silences);
    const detail = el("tr", { class: "detail", hidden: true }, el("td", { colspan: "9" }, diagnosisDetail(d)));
    const row = el("tr", { class: `diag-row row-${d.state}`, dataset: { id: String(d.id), rule: d.rule || "", run: d.run || "", project: d.project || "", state: d.state, silenced: silence ? String(pick(silence, "id")) : "" } },
      el("td", { title: d.firstSeen ? fmtAgo(d.firstSeen) : "" }, fmtTime(d.firstSeen)),
      el("td", {}, d.run ? el("a", { href: runUrl(d.project || "default", d.run) }, `${d.project}/${d.run}`) : ""),
      el("td", {}, el("code", {}, d.rule || "")),
      el("td", {}, el("span", { class: `badge sev-${d.severity}` }, d.severity)),
      el("td", {}, el("span", { class: `state state-${d.state}` }, d.state),
        silence ? el("span", { class: "silenced", title: `not sent: silence #${pick(silence, "id")} until ${fmtTime(toDate(pick(silence, "expires")))}` }, "silenced") : null),
      el("td", { class: "num" }, d.step ?? ""),
      el("td", {}, d.layer ? el("code", {}, d.layer) : ""),
      el("td", { class: "symptom" }, el("button", { type: "button", class: "link", onclick: () => (detail.hidden = !detail.hidden) }, d.symptom || "(details)")),
      el("td", {}, el("button", { type: "button", class: "small", title: "fill in the silence form for this run and rule", onclick: () => prefillSilence(d) }, "silence…")));
    return [row, detail];
  }

  function silenceRow(s) {
    const id = pick(s, "id");
    const expires = toDate(pick(s, "expires"));
    const scope = [pick(s, "project"), pick(s, "run")].filter(Boolean).join("/") || "(everything)";
    return el("tr", { dataset: { id: String(id) } },
      el("td", { class: "num" }, `#${id}`),
      el("td", {}, scope),
      el("td", {}, pick(s, "rule") ? el("code", {}, pick(s, "rule")) : "all rules"),
      el("td", { title: expires ? fmtTime(expires) : "" }, expires ? `${fmtTime(expires)}` : ""),
      el("td", {}, pick(s, "comment") || ""),
      el("td", {}, pick(s, "created_by") || ""),
      el("td", {}, el("button", { type: "button", class: "small danger", onclick: () => removeSilence(id) }, "remove")));
  }

  async function refresh() {
    try {
      const [dResp, sResp] = await Promise.all([api(`/api/v1/diagnoses?${filterQuery()}`), api("/api/v1/silences")]);
      const ds = list(dResp, "diagnoses").map(diag);
      const ss = list(sResp, "silences");
      ds.sort((a, b) => (b.firstSeen || 0) - (a.firstSeen || 0));
      diagBody.replaceChildren(...ds.flatMap((d) => diagRows(d, ss)));
      document.getElementById("diagnoses").dataset.count = String(ds.length);
      document.getElementById("no-diagnoses").hidden = ds.length > 0;
      silBody.replaceChildren(...ss.map(silenceRow));
      document.getElementById("silences").dataset.count = String(ss.length);
      document.getElementById("no-silences").hidden = ss.length > 0;
      document.getElementById("updated").textContent = `updated ${fmtTime(new Date())}`;
      clearError("errors");
    } catch (err) {
      showError("errors", err);
    }
  }

  async function removeSilence(id) {
    try {
      await api(`/api/v1/silences/${encodeURIComponent(id)}`, { method: "DELETE" });
      silMsg.textContent = `Silence #${id} removed.`;
      silMsg.className = "ok";
      await refresh();
    } catch (err) {
      silMsg.textContent = err.message;
      silMsg.className = "error";
    }
  }

  silForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = silForm.elements;
    const body = { duration: f.duration.value.trim(), comment: f.comment.value.trim() };
    for (const k of ["project", "run", "rule", "created_by"]) {
      const v = f[k].value.trim();
      if (v) body[k] = v;
    }
    if (!body.project && !body.run) {
      silMsg.textContent = "Say what to silence: a project, a run, or both.";
      silMsg.className = "error";
      return;
    }
    try {
      const created = await api("/api/v1/silences", { method: "POST", json: body });
      const id = pick(created, "id");
      silMsg.textContent = `Silence${id !== undefined ? " #" + id : ""} added.`;
      silMsg.className = "ok";
      silForm.elements.comment.value = "";
      await refresh();
    } catch (err) {
      silMsg.textContent = err.message;
      silMsg.className = "error";
    }
  });

  let pollNow = null;
  filterForm.addEventListener("change", () => {
    const q = filterQuery();
    const refresh = new URLSearchParams(location.search).get("refresh");
    if (refresh) q.set("refresh", refresh);
    history.replaceState(null, "", location.pathname + (q.toString() ? "?" + q : ""));
    if (pollNow) pollNow();
  });
  filterForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    filterForm.dispatchEvent(new Event("change"));
  });
  pollNow = poll(refresh, POLL_MS);
})();
