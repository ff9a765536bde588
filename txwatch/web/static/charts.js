// Line charts for the run page, on uPlot: steps on x, synced cursor and zoom across charts, diagnosis
// markers at the step where each diagnosis fired, non-finite values shown as red ticks (they are symptoms).
"use strict";

(function () {
  const { el, fmtNum, fmtBytes, num } = window.txw;
  const PALETTE = ["#4c9be8", "#f28e2b", "#59a14f", "#e15759", "#b07aa1", "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac"];
  // Steps are whole numbers: tick every 1, 2, 5, 10, 20, 50, ... steps, never at 2.5.
  const STEP_INCRS = [];
  for (let p = 1; p <= 1e15; p *= 10) STEP_INCRS.push(p, 2 * p, 5 * p);
  const FLAG_PX = 18; // a diagnosis flag's width: closer flags are stacked
  const SEV_COLOR = { critical: "#e5484d", warning: "#f5a524", info: "#4c9be8" };
  const charts = {}; // id -> chart handle; tests read window.txwCharts
  window.txwCharts = charts;
  let zoomRange = null; // [min, max] steps while zoomed in, on every chart at once

  // [{step, value}] from the API -> {xs, ys, nonfinite: [steps]}; NaN/Inf become gaps plus red ticks.
  function columns(points, { positiveOnly = false } = {}) {
    const xs = new Array(points.length), ys = new Array(points.length), nonfinite = [];
    for (let i = 0; i < points.length; i++) {
      const p = points[i];
      const x = Array.isArray(p) ? p[0] : p.step;
      let y = num(Array.isArray(p) ? p[p.length - 1] : p.value);
      xs[i] = x;
      if (!Number.isFinite(y)) {
        nonfinite.push(x);
        y = null;
      } else if (positiveOnly && y <= 0) {
        y = null; // a log axis cannot show zero; the heatmap shows dead layers
      }
      ys[i] = y;
    }
    return { xs, ys, nonfinite };
  }

  // Several series with different steps -> one table on the union of steps (uPlot wants aligned columns).
  function align(cols) {
    if (cols.length === 1) return [cols[0].xs, cols[0].ys];
    const steps = new Set();
    cols.forEach((c) => c.xs.forEach((x) => steps.add(x)));
    const xs = Array.from(steps).sort((a, b) => a - b);
    const index = new Map(xs.map((x, i) => [x, i]));
    const out = [xs];
    for (const c of cols) {
      const ys = new Array(xs.length).fill(undefined);
      for (let i = 0; i < c.xs.length; i++) ys[index.get(c.xs[i])] = c.ys[i];
      out.push(ys);
    }
    return out;
  }

  function valueFormatter(unit) {
    if (unit === "bytes") return (v) => (v == null ? "" : fmtBytes(v));
    if (unit === "%") return (v) => (v == null ? "" : `${fmtNum(v, 3)}%`);
    if (unit === "s") return (v) => (v == null ? "" : `${fmtNum(v, 3)} s`);
    if (unit === "share") return (v) => (v == null ? "" : `${fmtNum(v * 100, 3)}%`);
    return (v) => (v == null ? "" : fmtNum(v, 4));
  }

  // The y axis as wide as its longest label (1.20e+27 needs more room than 0.5).
  function axisSize(u, values, axisIdx, cycleNum) {
    const axis = u.axes[axisIdx];
    if (cycleNum > 1) return axis._size;
    let size = axis.ticks.size + axis.gap;
    const longest = (values || []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), "");
    if (longest) {
      u.ctx.font = axis.font[0];
      size += u.ctx.measureText(longest).width / devicePixelRatio;
    }
    return Math.ceil(size) + 4;
  }

  function axisValues(unit) {
    if (unit === "bytes") return bytesTicks;
    const f = valueFormatter(unit);
    return (_u, splits) => splits.map((v) => f(v));
  }

  // Byte ticks in one unit, with as many decimals as the spacing needs (435.4, 435.5 MiB, not 435 twice).
  function bytesTicks(_u, splits) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    const top = Math.max(...splits.map((v) => Math.abs(v)));
    let i = 0;
    while (top >= 1024 ** (i + 1) && i < units.length - 1) i++;
    const size = 1024 ** i;
    const step = splits.length > 1 ? Math.abs(splits[1] - splits[0]) / size : 1;
    const decimals = Math.min(3, Math.max(0, Math.ceil(-Math.log10(step))));
    return splits.map((v) => `${(v / size).toFixed(decimals)} ${units[i]}`);
  }

  // Draws markers (vertical lines + clickable flags), the healthy band and non-finite ticks.
  function overlayPlugin(handle) {
    function drawAll(u) {
      const ctx = u.ctx, { left, top, width, height } = u.bbox;
      ctx.save();
      if (handle.band) {
        const y0 = u.valToPos(handle.band[0], "y", true), y1 = u.valToPos(handle.band[1], "y", true);
        const a = Math.max(top, Math.min(y0, y1)), b = Math.min(top + height, Math.max(y0, y1));
        if (b > a) {
          ctx.fillStyle = "rgba(89,161,79,0.08)";
          ctx.fillRect(left, a, width, b - a);
        }
      }
      ctx.fillStyle = "#e5484d";
      for (const x of handle.nonfinite) {
        const px = u.valToPos(x, "x", true);
        if (px >= left && px <= left + width) ctx.fillRect(px - 1, top, 2, 8 * devicePixelRatio);
      }
      ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
      ctx.lineWidth = devicePixelRatio;
      for (const m of handle.markers) {
        const px = u.valToPos(m.step, "x", true);
        if (px < left || px > left + width) continue;
        ctx.strokeStyle = SEV_COLOR[m.diag.severity] || "#888";
        ctx.beginPath();
        ctx.moveTo(px, top);
        ctx.lineTo(px, top + height);
        ctx.stroke();
      }
      ctx.restore();
      placeFlags(u);
    }
    function placeFlags(u) {
      const [xmin, xmax] = [u.scales.x.min, u.scales.x.max];
      const rowEnds = []; // per row, the x where its last flag ends
      const visible = handle.markers.filter((m) => {
        const shown = xmin != null && m.step >= xmin && m.step <= xmax;
        m.node.hidden = !shown;
        return shown;
      });
      visible.sort((a, b) => a.step - b.step);
      for (const m of visible) {
        const x = u.valToPos(m.step, "x");
        let row = rowEnds.findIndex((end) => end <= x - FLAG_PX);
        if (row < 0) row = rowEnds.length;
        rowEnds[row] = x;
        m.node.style.left = `${x}px`;
        m.node.style.top = `${row * (FLAG_PX + 1) - 2}px`;
        m.node.dataset.row = String(row);
      }
    }
    return { hooks: { draw: [drawAll] } };
  }

  // Zoom every chart to steps [min, max] (null: the whole run) and tell the listeners (the page refetches).
  function zoomTo(min, max) {
    zoomRange = min == null ? null : [min, max];
    for (const h of Object.values(charts)) applyZoom(h);
    for (const f of zoomListeners) f(min, max);
  }

  function applyZoom(h) {
    if (!h.u) return;
    const xs = h.u.data[0];
    if (zoomRange) h.u.setScale("x", { min: zoomRange[0], max: zoomRange[1] });
    else if (xs.length) h.u.setScale("x", { min: xs[0], max: xs[xs.length - 1] });
  }
  const zoomListeners = [];

  /**
   * A chart in `container` for `series`: [{label, points, unit, color, dash, scale}].
   * opts: {id, title, log, band: [lo, hi], markers: [{step, diag}], onMarker(diag, node, pinned), height}.
   * Sets data-points (total), data-counts (JSON series name -> points received) and data-markers on the container.
   */
  function lineChart(container, series, opts) {
    const handle = charts[opts.id] || { id: opts.id, container, markers: [], nonfinite: [] };
    charts[opts.id] = handle;
    handle.band = opts.band || null;
    const cols = series.map((s) => columns(s.points, { positiveOnly: !!opts.log }));
    const data = align(cols);
    handle.nonfinite = cols.flatMap((c) => c.nonfinite);
    const counts = {};
    series.forEach((s) => (counts[s.name || s.label] = s.points.length)); // keyed by series name
    container.dataset.points = String(series.reduce((a, s) => a + s.points.length, 0));
    container.dataset.counts = JSON.stringify(counts);
    container.dataset.nonfinite = String(handle.nonfinite.length);

    const units = [...new Set(series.map((s) => s.unit || ""))];
    const sig = JSON.stringify([series.map((s) => [s.label, s.unit, s.scale]), !!opts.log]);
    if (handle.u && handle.sig === sig) {
      // Live update; a zoomed-in chart stays on the zoomed steps.
      handle.u.setData(data, !zoomRange);
      if (zoomRange) applyZoom(handle);
    } else {
      if (handle.u) handle.u.destroy();
      container.querySelectorAll(".uplot, .marker-layer").forEach((n) => n.remove());
      handle.sig = sig;
      const scales = { x: { time: false } };
      const axes = [{ label: "step", stroke: "#9aa4b2", incrs: STEP_INCRS, grid: { stroke: "#2a313c" }, ticks: { stroke: "#2a313c" } }];
      units.forEach((unit, i) => {
        const key = i === 0 ? "y" : `y${i}`;
        scales[key] = opts.log ? { distr: 3 } : unit === "share" ? { range: [0, 1] } : {};
        axes.push({
          scale: key, side: i === 0 ? 3 : 1, stroke: "#9aa4b2", values: axisValues(unit), size: axisSize,
          grid: { show: i === 0, stroke: "#2a313c" }, ticks: { stroke: "#2a313c" },
        });
      });
      const uSeries = [{ label: "step", value: (_u, v) => (v == null ? "" : String(v)) }];
      series.forEach((s, i) => {
        const unitIndex = units.indexOf(s.unit || "");
        uSeries.push({
          label: s.label, scale: unitIndex === 0 ? "y" : `y${unitIndex}`,
          stroke: s.color || PALETTE[i % PALETTE.length], width: 1.5, dash: s.dash, spanGaps: true,
          points: { show: s.points.length < 60 ? true : false, size: 4 },
          value: (_u, v) => valueFormatter(s.unit)(v),
        });
      });
      const width = Math.max(300, container.clientWidth || 600);
      const uopts = {
        width, height: opts.height || 240, scales, axes, series: uSeries,
        legend: { live: true },
        // Dragging selects steps; the setSelect hook zooms every chart to them (uPlot's own zoom would move
        // only this one). Double click (our handler below) zooms back out.
        cursor: { sync: { key: "txw-steps" }, drag: { x: true, y: false, setScale: false }, bind: { dblclick: () => null } },
        plugins: [overlayPlugin(handle)],
        hooks: {
          setSelect: [(u) => {
            if (u.select.width < 3) return;
            const min = u.posToVal(u.select.left, "x"), max = u.posToVal(u.select.left + u.select.width, "x");
            u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
            zoomTo(min, max);
          }],
        },
      };
      handle.u = new uPlot(uopts, data, container);
      if (zoomRange) applyZoom(handle);
      handle.layer = el("div", { class: "marker-layer" });
      handle.markerKey = null; // a new chart needs its flags again
      handle.u.over.append(handle.layer);
      handle.u.over.addEventListener("dblclick", resetZoom);
      if (!handle.observer) {
        handle.observer = new ResizeObserver(() => {
          const w = container.clientWidth;
          if (handle.u && w && Math.abs(w - handle.u.width) > 2) handle.u.setSize({ width: w, height: handle.u.height });
        });
        handle.observer.observe(container);
      }
    }
    setMarkers(handle, opts.markers || [], opts.onMarker);
    handle.u.redraw(false, false); // draws the marker lines and places the flags
    return handle;
  }

  // One flag per diagnosis at its exact step; flags that would overlap are stacked in rows below each other.
  // Rebuilt only when the set of diagnoses changes, so a live refresh does not pull a flag from under the mouse.
  function setMarkers(handle, markers, onMarker) {
    const valid = markers.filter((m) => m.step !== null && m.step !== undefined && Number.isFinite(Number(m.step)));
    const key = JSON.stringify(valid.map((m) => [m.diag.id, m.diag.rule, m.step, m.diag.severity, m.diag.state]));
    handle.onMarker = onMarker;
    if (key === handle.markerKey) return;
    handle.markerKey = key;
    handle.layer.replaceChildren();
    handle.markers = valid.map((m) => {
      const node = el("button", {
        class: `diag-marker sev-${m.diag.severity}`, type: "button",
        title: `${m.diag.rule}: ${m.diag.symptom}`,
        "aria-label": `${m.diag.severity} diagnosis ${m.diag.rule} at step ${m.step}`,
        dataset: { rule: m.diag.rule || "", step: String(m.step), severity: m.diag.severity, layer: m.diag.layer || "", id: String(m.diag.id ?? "") },
      });
      node.textContent = "!";
      node.addEventListener("mouseenter", () => handle.onMarker && handle.onMarker(m.diag, node, false));
      node.addEventListener("focus", () => handle.onMarker && handle.onMarker(m.diag, node, false));
      node.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (handle.onMarker) handle.onMarker(m.diag, node, true);
      });
      handle.layer.append(node);
      return { step: Number(m.step), diag: m.diag, node };
    });
    handle.container.dataset.markers = String(handle.markers.length);
  }

  function resetZoom() {
    zoomTo(null, null);
  }

  function isZoomed() {
    return zoomRange !== null;
  }

  window.txwChartsApi = { lineChart, columns, align, PALETTE, SEV_COLOR, resetZoom, isZoomed, onZoom: (f) => zoomListeners.push(f) };
})();
