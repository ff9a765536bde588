// Loaded "async" at the top of the run page: starts the first screen's API requests while the browser is
// still fetching and compiling the scripts that will draw them, saving a round trip on opening. common.js's
// api() takes these answers (once each) instead of asking again; anything unusual (a 401, an error) is
// simply asked again through the normal path.
"use strict";

(function () {
  if (window.txw) return; // the page's scripts are already running: nothing to win
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const base = meta("txwatch-base"), project = meta("txwatch-project"), run = meta("txwatch-run");
  if (!project || !run) return;
  let token = "";
  try {
    token = localStorage.getItem("txwatch.token") || "";
  } catch (e) {
    /* no storage: no token */
  }
  const headers = { Accept: "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const r = `/api/v1/runs/${encodeURIComponent(project)}/${encodeURIComponent(run)}`;
  // The same paths run.js asks for: the run, its series, its diagnoses, the top charts' series.
  const paths = [r, `${r}/series`, `/api/v1/diagnoses?${new URLSearchParams({ project, run })}`];
  for (const name of ["loss", "val_loss", "lr/0", "grad_norm_total"]) paths.push(`${r}/series/${encodeURIComponent(name)}?max_points=2000`);
  window.txwBoot = new Map(
    paths.map((p) => [p, fetch(base + p, { headers, cache: "no-store" }).then(async (resp) => ({ ok: resp.ok, text: await resp.text() }), () => null)])
  );
})();
