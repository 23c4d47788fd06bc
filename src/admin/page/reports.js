// connector-relay admin page, Reports view: GET /api/reports drawn as inline SVG by this
// file (no chart library, no network fetch beyond the API). Uses api(), report() and say()
// of app.js; everything else stays inside this function so no name clashes with the
// other scripts of the page.
//
// Every mark carries its number in data-* attributes (data-series, data-bucket,
// data-count, data-version, data-rule) and a <title> tooltip, so what is drawn can be
// read back exactly (tests/admin_reports.rs does).
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const PALETTE = ["#0f6cbd", "#e8891c", "#2e8540", "#8764b8", "#c43e1c", "#038387", "#a0527d"];
  const OTHER_COLOR = "#9e9e9e";
  const DIRECTION_COLORS = { Inbound: "#0f6cbd", Outbound: "#e8891c" };
  const TLS_COLORS = { "TLSv1.3": "#1e7b34", "TLSv1.2": "#7fba00", Other: "#e5c100", None: "#b3261e" };
  const PERIODS = [["24h", "24 hours"], ["7d", "7 days"], ["30d", "30 days"]];
  const CHARTS = [
    ["traffic", "Mail flow: messages in and out", true],
    ["inbound", "Inbound messages by connector", false],
    ["outbound", "Outbound messages by connector", false],
    ["tls-inbound", "TLS encryption, inbound", false],
    ["tls-outbound", "TLS encryption, outbound", false],
    ["refusals", "Refusals by rule", true],
  ];

  let since = "7d";

  // ---- small builders ---------------------------------------------------------------

  function el(name, attrs, parent, text) {
    const e = document.createElement(name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = String(text);
    if (parent) parent.appendChild(e);
    return e;
  }

  function svg(name, attrs, parent, text) {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = String(text);
    if (parent) parent.appendChild(e);
    return e;
  }

  // The hover tooltip of an SVG mark.
  const tip = (mark, text) => svg("title", {}, mark, text);

  const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");
  const percent = (part, whole) => (whole ? Math.round((100 * part) / whole) : 0) + "%";

  // ---- time -------------------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, "0");
  const day = (d) => pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate());
  const clock = (d) => pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());

  // "2026-11-27 08:00" (UTC), the form of tooltips and the period line.
  const stamp = (ms) => new Date(ms).toISOString().slice(0, 16).replace("T", " ");

  // A bucket's axis label: the day for day-sized buckets, else the time, with the day
  // where it changes.
  function tickLabel(ms, bucketMs, previousMs) {
    const d = new Date(ms);
    if (bucketMs >= 86400000) return day(d);
    const newDay = previousMs == null || day(new Date(previousMs)) !== day(d);
    return newDay ? day(d) + " " + clock(d) : clock(d);
  }

  // The bucket in words, for the y axis: "hour", "6 hours", "day".
  function bucketWords(ms) {
    for (const [size, unit] of [[604800000, "week"], [86400000, "day"], [3600000, "hour"], [60000, "minute"]]) {
      if (ms % size === 0) return ms === size ? unit : ms / size + " " + unit + "s";
    }
    return Math.round(ms / 1000) + " seconds";
  }

  // ---- scales -----------------------------------------------------------------------

  // A round top for a count axis and its step (1, 2, 5 times a power of ten; whole numbers).
  function niceScale(max) {
    if (max <= 0) return { top: 1, step: 1 };
    const rough = max / 4;
    const mag = Math.pow(10, Math.floor(Math.log10(rough)));
    const step = Math.max(1, [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= rough));
    return { top: Math.ceil(max / step) * step, step };
  }

  // ---- charts -----------------------------------------------------------------------

  // A legend under a chart: one entry per series with its total (and a note, if any).
  function legend(box, entries, unit) {
    const ul = el("ul", { class: "legend" }, box);
    for (const e of entries) {
      const li = el("li", { "data-series": e.name, "data-total": e.total }, ul);
      el("span", { class: "swatch" }, li).style.background = e.color;
      li.appendChild(document.createTextNode(e.name + ": " + plural(e.total, unit) + (e.note ? " (" + e.note + ")" : "")));
    }
  }

  function empty(box, text) {
    el("p", { class: "empty" }, box, text);
  }

  // Bars over time: one bar per series side by side (grouped) or one stacked bar per
  // bucket. series: [{name, color, counts, total}].
  function timeChart(box, r, series, stacked) {
    const width = Math.max(360, box.clientWidth || 600);
    const height = 240;
    const m = { left: 52, right: 12, top: 12, bottom: 46 };
    const plotW = width - m.left - m.right;
    const plotH = height - m.top - m.bottom;
    const n = r.Buckets.length;
    const perBucket = r.Buckets.map((_, i) => series.map((s) => s.counts[i]));
    const max = Math.max(0, ...perBucket.map((c) => (stacked ? c.reduce((a, b) => a + b, 0) : Math.max(0, ...c))));
    const { top, step } = niceScale(max);
    const y = (v) => m.top + plotH - (v / top) * plotH;
    const slot = plotW / n;
    const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img" }, box);
    // Grid and y axis, with its unit.
    const axis = svg("g", { class: "axis" }, chart);
    for (let v = 0; v <= top; v += step) {
      svg("line", { class: "grid", x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }, axis);
      svg("text", { x: m.left - 6, y: y(v) + 4, "text-anchor": "end" }, axis, v);
    }
    svg("text", { x: 12, y: m.top + plotH / 2, transform: "rotate(-90 12 " + (m.top + plotH / 2) + ")", "text-anchor": "middle" },
      axis, "messages per " + bucketWords(r.BucketMs));
    // The time axis: a label every few buckets so they never overlap.
    svg("line", { x1: m.left, x2: width - m.right, y1: y(0), y2: y(0) }, axis);
    const every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(plotW / 90))));
    let labelled = null;
    for (let i = 0; i < n; i += every) {
      const x = m.left + slot * i + slot / 2;
      svg("line", { x1: x, x2: x, y1: y(0), y2: y(0) + 4 }, axis);
      svg("text", { x, y: y(0) + 17, "text-anchor": "middle" }, axis, tickLabel(r.Buckets[i], r.BucketMs, labelled));
      labelled = r.Buckets[i];
    }
    svg("text", { x: m.left + plotW / 2, y: height - 6, "text-anchor": "middle" }, axis, "time (UTC)");
    // The bars.
    const gap = Math.min(4, slot * 0.2);
    const barW = stacked ? slot - gap : (slot - gap) / series.length;
    r.Buckets.forEach((start, i) => {
      let base = 0;
      series.forEach((s, k) => {
        const v = s.counts[i];
        if (!v) return;
        const x = m.left + slot * i + gap / 2 + (stacked ? 0 : k * barW);
        const y0 = stacked ? base : 0;
        const bar = svg("rect", {
          class: "bar", x, y: y(y0 + v), width: Math.max(1, barW), height: y(y0) - y(y0 + v), fill: s.color,
          "data-series": s.name, "data-bucket": start, "data-count": v,
        }, chart);
        tip(bar, s.name + ", " + stamp(start) + " UTC (" + bucketWords(r.BucketMs) + "): " + plural(v, "message"));
        if (stacked) base += v;
      });
    });
    legend(box, series, "message");
  }

  // The TLS share of one direction as a donut: one ring segment per version, the share
  // under TLS in the middle.
  function donut(box, d) {
    const all = d.Tls.reduce((a, t) => a + t.Count, 0);
    if (!all) return empty(box, "No " + d.Direction.toLowerCase() + " messages in this period.");
    const size = 200, r = 70, c = 2 * Math.PI * r;
    const chart = svg("svg", { viewBox: "0 0 " + size + " " + size, role: "img", class: "donut" }, box);
    const ring = svg("g", { transform: "rotate(-90 100 100)" }, chart);
    let offset = 0;
    for (const t of d.Tls) {
      if (!t.Count) continue;
      const len = (t.Count / all) * c;
      const slice = svg("circle", {
        class: "slice", cx: 100, cy: 100, r, fill: "none", stroke: TLS_COLORS[t.Version] || OTHER_COLOR,
        "stroke-width": 30, "stroke-dasharray": len + " " + (c - len), "stroke-dashoffset": -offset,
        "data-version": t.Version, "data-count": t.Count,
      }, ring);
      tip(slice, label(t.Version) + ": " + t.Count + " of " + plural(all, "message") + " (" + percent(t.Count, all) + ")");
      offset += len;
    }
    const share = Math.round(100 * (d.TlsShare || 0));
    svg("text", { class: "share", x: 100, y: 100, "text-anchor": "middle", "data-share": share }, chart, share + "%");
    svg("text", { x: 100, y: 120, "text-anchor": "middle" }, chart, "under TLS");
    legend(box, d.Tls.map((t) => ({
      name: label(t.Version), total: t.Count, color: TLS_COLORS[t.Version] || OTHER_COLOR, note: percent(t.Count, all),
    })), "message");
  }

  const label = (version) => (version === "None" ? "No TLS" : version.replace("TLSv", "TLS "));

  // Refusals as horizontal bars, one per rule, most first.
  function ruleChart(box, refusals) {
    if (!refusals.length) return empty(box, "No refusals in this period.");
    const width = Math.max(360, box.clientWidth || 600);
    const row = 24, labelW = Math.min(300, width * 0.4), m = { top: 6, bottom: 36, right: 48 };
    const height = m.top + row * refusals.length + m.bottom;
    const plotW = width - labelW - m.right;
    const { top, step } = niceScale(Math.max(...refusals.map((x) => x.Count)));
    const x = (v) => labelW + (v / top) * plotW;
    const chart = svg("svg", { viewBox: "0 0 " + width + " " + height, role: "img" }, box);
    const axis = svg("g", { class: "axis" }, chart);
    const base = m.top + row * refusals.length;
    for (let v = 0; v <= top; v += step) {
      svg("line", { class: "grid", x1: x(v), x2: x(v), y1: m.top, y2: base }, axis);
      svg("text", { x: x(v), y: base + 15, "text-anchor": "middle" }, axis, v);
    }
    svg("text", { x: labelW + plotW / 2, y: height - 4, "text-anchor": "middle" }, axis, "refusals (Rejected trace rows)");
    refusals.forEach((f, i) => {
      const y = m.top + row * i;
      const name = f.Rule || "(no rule)";
      svg("text", { x: labelW - 8, y: y + row / 2 + 4, "text-anchor": "end" }, chart, name);
      const bar = svg("rect", {
        class: "bar", x: labelW, y: y + 3, width: Math.max(1, x(f.Count) - labelW), height: row - 6,
        fill: "#b3261e", "data-rule": name, "data-count": f.Count,
      }, chart);
      tip(bar, name + ": " + plural(f.Count, "refusal"));
      svg("text", { x: x(f.Count) + 5, y: y + row / 2 + 4 }, chart, f.Count);
    });
  }

  // ---- the view ---------------------------------------------------------------------

  // The view's skeleton, built once: period buttons, the range line, tiles, chart boxes.
  function skeleton(view) {
    if (view.dataset.built) return;
    view.dataset.built = "1";
    el("h2", {}, view, "Reports");
    const bar = el("div", { class: "filters" }, view);
    const group = el("div", { id: "report-period", class: "period", role: "group", "aria-label": "Period" }, bar);
    for (const [value, text] of PERIODS) {
      const b = el("button", { type: "button", "data-since": value }, group, text);
      b.addEventListener("click", () => { since = value; loadReports(); });
    }
    el("button", { id: "report-refresh", type: "button" }, bar, "Refresh").addEventListener("click", loadReports);
    el("p", { id: "report-range", class: "hint" }, view);
    el("div", { id: "report-tiles", class: "tiles" }, view);
    const charts = el("div", { class: "charts" }, view);
    for (const [id, title, wide] of CHARTS) {
      const fig = el("figure", { id: "chart-" + id, class: "chart" + (wide ? " wide" : "") }, charts);
      el("figcaption", {}, fig, title);
      el("div", { class: "plot" }, fig);
    }
  }

  function plot(id) {
    const box = document.querySelector("#chart-" + id + " .plot");
    box.replaceChildren();
    return box;
  }

  function tiles(r) {
    const box = document.querySelector("#report-tiles");
    box.replaceChildren();
    const [inbound, outbound] = r.Directions;
    const share = (d) => (d.TlsShare == null ? "-" : Math.round(100 * d.TlsShare) + "%");
    for (const [key, value, text] of [
      ["inbound", inbound.Total, "inbound messages (accepted)"],
      ["outbound", outbound.Total, "outbound messages (delivered)"],
      ["refusals", r.RefusalsTotal, "refusals"],
      ["tls-inbound", share(inbound), "inbound under TLS"],
      ["tls-outbound", share(outbound), "outbound under TLS"],
    ]) {
      const tile = el("div", { class: "tile", "data-key": key, "data-value": value }, box);
      el("span", { class: "value" }, tile, value);
      el("span", { class: "label" }, tile, text);
    }
  }

  // The connectors of one direction as series: palette colours, grey for the rest.
  const connectorSeries = (d) => d.Connectors.map((s, i) => ({
    name: s.Connector, total: s.Total, counts: s.Counts,
    color: s.Grouped ? OTHER_COLOR : PALETTE[i % PALETTE.length],
  }));

  function draw(r) {
    document.querySelector("#report-range").textContent = "From " + stamp(r.SinceMs) + " to " + stamp(r.UntilMs) +
      " UTC, one bar per " + bucketWords(r.BucketMs) + ".";
    tiles(r);
    const [inbound, outbound] = r.Directions;
    const traffic = plot("traffic");
    if (inbound.Total + outbound.Total === 0) {
      empty(traffic, "No mail in this period.");
    } else {
      timeChart(traffic, r, r.Directions.map((d) => ({
        name: d.Direction, total: d.Total, counts: d.Counts, color: DIRECTION_COLORS[d.Direction],
      })), false);
    }
    for (const [id, d, what] of [["inbound", inbound, "accepted"], ["outbound", outbound, "delivered"]]) {
      const box = plot(id);
      if (d.Total === 0) empty(box, "No messages " + what + " in this period.");
      else timeChart(box, r, connectorSeries(d), true);
    }
    donut(plot("tls-inbound"), inbound);
    donut(plot("tls-outbound"), outbound);
    ruleChart(plot("refusals"), r.Refusals);
  }

  async function loadReports() {
    const view = document.querySelector("#reports-view");
    skeleton(view);
    for (const b of view.querySelectorAll("#report-period button")) b.classList.toggle("active", b.dataset.since === since);
    // data-loaded names the period drawn, empty while a load is under way.
    view.dataset.loaded = "";
    try {
      const r = await api("GET", "/api/reports?since=" + encodeURIComponent(since));
      draw(r);
      view.dataset.loaded = since;
    } catch (e) { report(e); }
  }

  document.querySelector("#tabs button[data-tab='reports']").addEventListener("click", loadReports);
})();
