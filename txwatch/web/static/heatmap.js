// Per-layer heatmap (layers x steps) drawn on a canvas with a log colour scale: a dead layer (exactly zero)
// is a black band, an explosion a bright column, non-finite values are white. Hover shows the cell.
"use strict";

(function () {
  const { el, fmtNum, num, pick } = window.txw;

  // "inferno": dark for small, bright for large, readable by colour-blind people; zero is pure black below it.
  const STOPS = ["#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06", "#fcffa4"]
    .map((h) => [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)]);
  const LOW = 0.12; // the smallest non-zero value is still visibly lighter than a dead layer's black
  const DEAD = [0, 0, 0], NONFINITE = [255, 255, 255], MISSING = null;
  const MAX_DECADES = 10; // healthy norms span 1e-4..1e1; an explosion to 1e20 must not flatten them to one colour

  function colour(t) {
    t = LOW + (1 - LOW) * Math.min(1, Math.max(0, t));
    const f = t * (STOPS.length - 1), i = Math.min(STOPS.length - 2, Math.floor(f)), r = f - i;
    const a = STOPS[i], b = STOPS[i + 1];
    return [a[0] + (b[0] - a[0]) * r, a[1] + (b[1] - a[1]) * r, a[2] + (b[2] - a[2]) * r];
  }

  // The API's heatmap {layers, steps, values[layer][bucket]} with NaN/Infinity as numbers and null for "no data".
  function normalize(resp) {
    let steps = pick(resp, "steps") || [];
    const layers = pick(resp, "layers") || [];
    let values = pick(resp, "values") || [];
    values = values.map((row) => row.map((v) => (v === null || v === undefined ? null : num(v))));
    // Steps where no layer was sampled (update ratios every 50th step, say) would be empty stripes: drop them.
    const keep = steps.map((_s, c) => values.some((row) => row[c] !== null && row[c] !== undefined));
    if (keep.some((k) => !k)) {
      steps = steps.filter((_s, c) => keep[c]);
      values = values.map((row) => row.filter((_v, c) => keep[c]));
    }
    return { layers, steps, values };
  }

  // Colour range over log10 of the positive finite values: from the 1st percentile (one stray tiny value
  // must not wash out the picture) up to at most MAX_DECADES above it; anything higher is an explosion and
  // saturates to the brightest colour.
  function range(values) {
    const logs = [];
    for (const row of values) for (const v of row) if (v !== null && Number.isFinite(v) && v > 0) logs.push(Math.log10(v));
    if (!logs.length) return [0, 1];
    logs.sort((a, b) => a - b);
    let lo = logs[Math.floor(0.01 * (logs.length - 1))], hi = logs[logs.length - 1];
    hi = Math.min(hi, lo + MAX_DECADES);
    if (hi - lo < 1) {
      lo -= 0.5;
      hi += 0.5;
    }
    return [lo, hi];
  }

  function cellColour(v, lo, hi) {
    if (v === null) return MISSING;
    if (!Number.isFinite(v)) return NONFINITE;
    if (v <= 0) return DEAD;
    return colour((Math.log10(v) - lo) / (hi - lo));
  }

  function middleEllipsis(ctx, text, maxWidth) {
    if (ctx.measureText(text).width <= maxWidth) return text;
    let keep = text.length;
    while (keep > 4) {
      keep -= 2;
      const t = text.slice(0, Math.ceil(keep / 3)) + "…" + text.slice(text.length - Math.floor((2 * keep) / 3));
      if (ctx.measureText(t).width <= maxWidth) return t;
    }
    return "…";
  }

  /**
   * Draw the heatmap of `resp` (the /layers answer) into `container`; returns the normalized data.
   * Sets data-rows (layers), data-cols (steps), data-layers (JSON names) and data-range on the container.
   */
  function heatmap(container, resp, { unit = "" } = {}) {
    const data = normalize(resp);
    const { layers, steps, values } = data;
    container.dataset.rows = String(layers.length);
    container.dataset.cols = String(steps.length);
    container.dataset.layers = JSON.stringify(layers);
    container.replaceChildren();
    if (!layers.length || !steps.length) {
      container.append(el("p", { class: "empty" }, "No per-layer samples yet."));
      return data;
    }
    const [lo, hi] = range(values);
    container.dataset.range = JSON.stringify([lo, hi]);
    const dpr = window.devicePixelRatio || 1;
    const width = Math.max(320, container.clientWidth || 800);
    const rowH = Math.max(2, Math.min(18, Math.floor(480 / layers.length)));
    const labelW = rowH >= 9 ? Math.min(260, Math.floor(width * 0.3)) : 16;
    const top = 6, bottom = 26, legendW = 70;
    const plotW = width - labelW - legendW - 10, plotH = rowH * layers.length;
    const height = top + plotH + bottom;
    const canvas = el("canvas", { class: "heatmap-canvas", role: "img", "aria-label": `heatmap of ${layers.length} layers by ${steps.length} steps` });
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);

    // Cells: one ImageData at one pixel per cell, scaled up without smoothing (fast for 1000 layers x 200 steps).
    const img = new ImageData(steps.length, layers.length);
    for (let r = 0; r < layers.length; r++) {
      for (let c = 0; c < steps.length; c++) {
        const rgb = cellColour(values[r][c] ?? null, lo, hi);
        const o = (r * steps.length + c) * 4;
        if (rgb) {
          img.data[o] = rgb[0];
          img.data[o + 1] = rgb[1];
          img.data[o + 2] = rgb[2];
          img.data[o + 3] = 255;
        }
      }
    }
    const off = document.createElement("canvas");
    off.width = steps.length;
    off.height = layers.length;
    off.getContext("2d").putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#1c2129";
    ctx.fillRect(labelW, top, plotW, plotH);
    ctx.drawImage(off, labelW, top, plotW, plotH);

    ctx.fillStyle = "#c9d1d9";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    if (rowH >= 9) {
      ctx.textAlign = "right";
      layers.forEach((name, r) => ctx.fillText(middleEllipsis(ctx, name, labelW - 8), labelW - 6, top + r * rowH + rowH / 2));
    }
    // Step ticks: about one per 90 px.
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    const nTicks = Math.max(2, Math.floor(plotW / 90));
    for (let k = 0; k < nTicks; k++) {
      const c = Math.round((k * (steps.length - 1)) / (nTicks - 1));
      const x = labelW + ((c + 0.5) * plotW) / steps.length;
      ctx.fillRect(x, top + plotH, 1, 4);
      ctx.fillText(String(steps[c]), x, top + plotH + 6);
    }
    // Colour bar with decades.
    const barX = labelW + plotW + 12, barW = 12;
    for (let y = 0; y < plotH; y++) {
      const rgb = colour(1 - y / Math.max(1, plotH - 1));
      ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      ctx.fillRect(barX, top + y, barW, 1);
    }
    ctx.fillStyle = "#c9d1d9";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    const labelAt = (v) => top + plotH - ((v - lo) / (hi - lo)) * plotH;
    const d0 = Math.ceil(lo), d1 = Math.floor(hi), stride = Math.max(1, Math.ceil((d1 - d0 + 1) / Math.max(2, plotH / 16)));
    for (let d = d0; d <= d1; d += stride) ctx.fillText(`1e${d}`, barX + barW + 4, labelAt(d));

    const tip = el("div", { class: "heatmap-tip", hidden: true });
    canvas.addEventListener("mousemove", (ev) => {
      const rect = canvas.getBoundingClientRect();
      const x = ev.clientX - rect.left - labelW, y = ev.clientY - rect.top - top;
      const c = Math.floor((x / plotW) * steps.length), r = Math.floor(y / rowH);
      if (x < 0 || y < 0 || c >= steps.length || r >= layers.length) {
        tip.hidden = true;
        return;
      }
      const v = values[r][c];
      tip.hidden = false;
      tip.textContent = `${layers[r]} · step ${steps[c]} · ${v === null || v === undefined ? "not sampled" : v === 0 ? "0 (dead)" : fmtNum(v, 4) + (unit ? " " + unit : "")}`;
      tip.style.left = `${Math.min(ev.clientX - rect.left + 12, width - 260)}px`;
      tip.style.top = `${ev.clientY - rect.top + 12}px`;
    });
    canvas.addEventListener("mouseleave", () => (tip.hidden = true));

    const legend = el("div", { class: "heatmap-legend" },
      el("span", { class: "swatch dead" }), "zero (dead)",
      el("span", { class: "swatch nonfinite" }), "NaN/Inf",
      el("span", { class: "muted" }, ` colour: log10, ${fmtNum(10 ** lo, 2)} … ${fmtNum(10 ** hi, 2)}`));
    container.append(el("div", { class: "heatmap-wrap" }, canvas, tip), legend);
    return data;
  }

  window.txwHeatmap = { heatmap, normalize, range };
})();
