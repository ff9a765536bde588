// txwatch page helpers shared by every page: the API client (bearer token from localStorage), JSON with
// NaN/Infinity, formatting, and the token prompt. No framework, no build step: plain ES2020 in one global.
"use strict";

(function () {
  const TOKEN_KEY = "txwatch.token";
  const body = document.body;
  const base = body.dataset.base || "";

  // Python's json module writes NaN, Infinity and -Infinity as bare literals; JSON.parse rejects them.
  // Replace them (outside strings only) with tagged strings, then turn those back into numbers.
  const NONFINITE = /"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g;
  const TAG = "\u0000txwatch:";
  function parseJSON(text) {
    try {
      return JSON.parse(text);
    } catch (err) {
      const tagged = text.replace(NONFINITE, (m) => (m[0] === '"' ? m : JSON.stringify(TAG + m)));
      return JSON.parse(tagged, (_k, v) => (typeof v === "string" && v.startsWith(TAG) ? Number(v.slice(TAG.length)) : v));
    }
  }

  function num(v) {
    // A point value may come as a number, null (a JSON encoder's NaN) or a string such as "NaN" / "Infinity".
    if (typeof v === "number") return v;
    if (v === null || v === undefined) return NaN;
    const n = Number(v);
    return n;
  }

  function getToken() {
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch (e) {
      return "";
    }
  }
  function setToken(t) {
    try {
      if (t) localStorage.setItem(TOKEN_KEY, t);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      /* private mode: the token then lives for this page only */
    }
    sessionToken = t;
  }
  let sessionToken = getToken();

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // Waiters for a token: every request that got a 401 waits here until the user submits one, then retries.
  let tokenWaiters = [];

  async function api(path, opts = {}) {
    const early = !opts.method && window.txwBoot && window.txwBoot.get(path);
    if (early) {
      window.txwBoot.delete(path);
      const answer = await early; // started by boot.js; only a plain success is taken as is
      if (answer && answer.ok) return answer.text ? parseJSON(answer.text) : null;
    }
    for (let attempt = 0; attempt < 5; attempt++) {
      const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
      if (sessionToken) headers.Authorization = "Bearer " + sessionToken;
      let init = { method: opts.method || "GET", headers, cache: "no-store" };
      if (opts.json !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(opts.json);
      }
      let resp;
      try {
        resp = await fetch(base + path, init);
      } catch (err) {
        setConnection(false, "collector unreachable");
        throw new ApiError(0, "the collector did not answer (" + err.message + ")");
      }
      setConnection(true);
      if (resp.status === 401) {
        await askForToken(sessionToken ? "That token was refused. Enter the collector's token:" : null);
        continue;
      }
      const text = await resp.text();
      if (!resp.ok) {
        let detail = text;
        try {
          // The API's error body: {"error": "<one line>", "details": [{"field", "problem"}]}.
          const j = parseJSON(text);
          const head = j.error ?? j.detail;
          detail = typeof head === "string" ? head : JSON.stringify(head ?? j);
          if (Array.isArray(j.details) && j.details.length) {
            detail += ": " + j.details.map((d) => (d.field ? `${d.field}: ${d.problem}` : d.problem || JSON.stringify(d))).join("; ");
          }
        } catch (e) {
          /* not JSON: show the text */
        }
        throw new ApiError(resp.status, `${resp.status}: ${detail}`);
      }
      return text ? parseJSON(text) : null;
    }
    throw new ApiError(401, "no accepted token");
  }

  function askForToken(message) {
    const dlg = document.getElementById("token-dialog");
    const msg = document.getElementById("token-message");
    if (message) msg.textContent = message;
    dlg.hidden = false;
    document.getElementById("token-input").focus();
    return new Promise((resolve) => tokenWaiters.push(resolve));
  }

  function wireTokenDialog() {
    const dlg = document.getElementById("token-dialog");
    const form = document.getElementById("token-form");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = document.getElementById("token-input");
      setToken(input.value.trim());
      input.value = "";
      dlg.hidden = true;
      const waiters = tokenWaiters;
      tokenWaiters = [];
      waiters.forEach((w) => w());
      updateTokenLink();
    });
    const forget = document.getElementById("token-forget");
    forget.addEventListener("click", (ev) => {
      ev.preventDefault();
      setToken("");
      updateTokenLink();
    });
    updateTokenLink();
  }

  function updateTokenLink() {
    const forget = document.getElementById("token-forget");
    forget.hidden = !sessionToken;
  }

  function setConnection(ok, why) {
    const el = document.getElementById("connection");
    if (!el) return;
    el.dataset.ok = ok ? "1" : "0";
    el.textContent = ok ? "" : why || "offline";
  }

  // ---- values from the API, whatever reasonable shape the collector gives them ----

  function pick(obj, ...keys) {
    if (!obj) return undefined;
    for (const k of keys) {
      const parts = k.split(".");
      let v = obj;
      for (const p of parts) v = v == null ? undefined : v[p];
      if (v !== undefined && v !== null) return v;
    }
    return undefined;
  }

  function list(resp, ...keys) {
    if (Array.isArray(resp)) return resp;
    for (const k of keys) if (resp && Array.isArray(resp[k])) return resp[k];
    return [];
  }

  function toDate(v) {
    if (v === undefined || v === null || v === "") return null;
    if (typeof v === "number") return new Date(v * 1000);
    // Naive ISO strings from a database without time zones are UTC.
    const s = /[zZ]|[+-]\d\d:?\d\d$/.test(v) ? v : v + "Z";
    const d = new Date(s);
    return isNaN(d) ? null : d;
  }

  // ---- formatting ----

  function fmtNum(v, digits = 4) {
    v = num(v);
    if (Number.isNaN(v)) return "NaN";
    if (v === Infinity) return "+Inf";
    if (v === -Infinity) return "-Inf";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1e5 || a < 1e-3) return v.toExponential(Math.max(1, digits - 2));
    return Number(v.toPrecision(digits)).toString();
  }

  function fmtBytes(v) {
    v = num(v);
    if (!Number.isFinite(v)) return fmtNum(v);
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function fmtTime(d) {
    if (!d) return "";
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function fmtAgo(d) {
    if (!d) return "";
    return fmtDuration((Date.now() - d.getTime()) / 1000) + " ago";
  }

  function fmtDuration(s) {
    if (s === null || s === undefined || !Number.isFinite(s)) return "";
    s = Math.max(0, Math.round(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    if (d) return `${d}d ${h}h`;
    if (h) return `${h}h ${m}m`;
    if (m) return `${m}m ${sec}s`;
    return `${sec}s`;
  }

  // ---- DOM ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function runUrl(project, run) {
    return `${base}/runs/${encodeURIComponent(project)}/${encodeURIComponent(run)}`;
  }
  function runApi(project, run) {
    return `/api/v1/runs/${encodeURIComponent(project)}/${encodeURIComponent(run)}`;
  }

  function showError(where, err) {
    const box = document.getElementById(where) || document.getElementById("errors");
    if (!box) return;
    box.hidden = false;
    box.textContent = err && err.message ? err.message : String(err);
  }
  function clearError(where) {
    const box = document.getElementById(where) || document.getElementById("errors");
    if (box) {
      box.hidden = true;
      box.textContent = "";
    }
  }

  // Poll fn every interval while the tab is visible; returns a function that polls now. A "refresh=N" URL
  // parameter (seconds, at least 1) overrides the page's interval: a wall display may want it faster.
  function poll(fn, intervalMs) {
    const asked = Number(new URLSearchParams(location.search).get("refresh"));
    if (Number.isFinite(asked) && asked >= 1) intervalMs = asked * 1000;
    let timer = null, running = false;
    async function tick() {
      clearTimeout(timer);
      if (!running) {
        running = true;
        try {
          await fn();
        } catch (err) {
          console.error(err);
        } finally {
          running = false;
        }
      }
      timer = setTimeout(tick, intervalMs);
    }
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) tick();
    });
    tick();
    return tick;
  }

  const SEVERITIES = ["critical", "warning", "info"];

  function severityBadges(counts) {
    const wrap = el("span", { class: "sev-badges" });
    for (const s of SEVERITIES) {
      if (counts[s]) wrap.append(el("span", { class: `badge sev-${s}`, title: `${counts[s]} ${s}`, dataset: { severity: s } }, `${counts[s]} ${s}`));
    }
    return wrap;
  }

  // A diagnosis from /api/v1/diagnoses, with its dates parsed and its fix as a list of steps.
  function diag(d) {
    const fix = d.fix;
    return {
      id: d.id,
      rule: d.rule,
      severity: d.severity || "info",
      state: d.state || "",
      symptom: d.symptom || "",
      cause: d.cause || "",
      fix: Array.isArray(fix) ? fix : fix ? [String(fix)] : [],
      evidence: d.evidence || {},
      reason: d.reason || "",
      run: d.run,
      project: d.project,
      layer: d.layer || null,
      step: d.step, // the step at which it was first raised
      lastStep: d.last_step,
      resolvedStep: d.resolved_step,
      firstSeen: toDate(d.first_seen),
      lastSeen: toDate(d.last_seen),
      resolvedAt: toDate(d.resolved_at),
    };
  }

  const EVIDENCE_ITEMS = 8; // entries shown per list or table in the evidence; the rest are counted

  // Evidence is free-form JSON from the rule (figures, step, layers, per-layer figures): numbers formatted,
  // lists and tables cut to a few entries so a rule that names 500 layers still fits on the screen.
  function evidenceValue(v, depth = 0) {
    if (v === null || v === undefined) return el("span", { class: "muted" }, "no data");
    if (typeof v === "number") return fmtNum(v, 5);
    if (typeof v !== "object") return String(v);
    if (Array.isArray(v)) {
      const shown = v.slice(0, EVIDENCE_ITEMS).map((x) => (typeof x === "object" ? JSON.stringify(x) : typeof x === "number" ? fmtNum(x, 5) : String(x)));
      return el("span", {}, shown.join(", "), v.length > EVIDENCE_ITEMS ? el("span", { class: "muted" }, ` and ${v.length - EVIDENCE_ITEMS} more`) : null);
    }
    const entries = Object.entries(v);
    if (depth >= 1) {
      const parts = entries.slice(0, EVIDENCE_ITEMS).map(([k, x]) => `${k} = ${typeof x === "number" ? fmtNum(x, 4) : JSON.stringify(x)}`);
      return el("span", {}, parts.join("; "), entries.length > EVIDENCE_ITEMS ? el("span", { class: "muted" }, ` and ${entries.length - EVIDENCE_ITEMS} more`) : null);
    }
    const rows = entries.slice(0, EVIDENCE_ITEMS).map(([k, x]) => el("tr", {}, el("th", {}, el("code", {}, k)), el("td", {}, evidenceValue(x, depth + 1))));
    if (entries.length > EVIDENCE_ITEMS) rows.push(el("tr", {}, el("td", { colspan: "2", class: "muted" }, `and ${entries.length - EVIDENCE_ITEMS} more`)));
    return el("table", { class: "evidence-table" }, rows);
  }

  function diagnosisDetail(d) {
    const ev = d.evidence && typeof d.evidence === "object" ? d.evidence : {};
    const evRows = Object.entries(ev).map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, evidenceValue(v))));
    return el(
      "div",
      { class: `diag-detail sev-border-${d.severity}` },
      el("div", { class: "diag-head" },
        el("span", { class: `badge sev-${d.severity}` }, d.severity),
        el("strong", {}, " ", d.rule || ""),
        d.layer ? el("span", { class: "layer" }, " layer ", el("code", {}, d.layer)) : null,
        d.step !== undefined && d.step !== null ? el("span", { class: "muted" }, ` at step ${d.step}`) : null,
        d.state ? el("span", { class: `state state-${d.state}` }, d.state) : null,
        d.state === "resolved" && d.resolvedStep != null ? el("span", { class: "muted" }, ` at step ${d.resolvedStep}`) : null,
        d.state === "ended" ? el("span", { class: "muted" }, " (the run ended while it was firing)") : null),
      el("p", { class: "symptom" }, el("b", {}, "Symptom: "), d.symptom),
      d.reason ? el("p", { class: "reason" }, d.reason) : null,
      el("p", { class: "cause" }, el("b", {}, "Likely cause: "), d.cause),
      d.fix.length ? el("div", { class: "fix" }, el("b", {}, "Fix:"), el("ol", {}, d.fix.map((f) => el("li", {}, typeof f === "string" ? f : JSON.stringify(f))))) : null,
      evRows.length ? el("details", { class: "evidence", open: true }, el("summary", {}, "Evidence"), el("table", { class: "evidence-table" }, evRows)) : null
    );
  }

  document.addEventListener("DOMContentLoaded", wireTokenDialog);

  window.txw = {
    base, api, ApiError, parseJSON, num, pick, list, toDate, fmtNum, fmtBytes, fmtTime, fmtAgo, fmtDuration,
    el, runUrl, runApi, showError, clearError, poll, severityBadges, SEVERITIES, diag, diagnosisDetail,
    setToken, getToken: () => sessionToken,
  };
})();
