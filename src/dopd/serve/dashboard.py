# ruff: noqa: E501  (the page is one inline HTML/JS document)
"""The live dashboard page: one self-contained HTML document (inline CSS and JS, no external
asset) that polls ``/v1/cluster`` every second and draws what a DOPD operator watches over the
last minutes, against the wall clock:

- SLO attainment (with its target) and goodput (with the arrival rate for reference);
- P50 and P90 TTFT and TPOT with the SLO lines;
- the observed arrival rate with the policy's forecast and its upper bound;
- the P/D split as stacked counts (prefill, decode, mixed, in transition), and the requests in
  flight and waiting.

Every chart has labelled axes with units, "nice" ticks over a minimum range (an idle server
shows a readable empty chart with its SLO line, not ``1e-9``) and a caption. Below: the
policy's latest plan in words, the role decisions (newest first) with why, the forecast and
the predicted P90s of the split before and after, and what was observed before and after, and
the instance table. An API key, when the server needs one, is passed as ``/dashboard?key=...``.
"""

from __future__ import annotations

DASHBOARD_HTML = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dopd dashboard</title>
<style>
body{font-family:system-ui,sans-serif;margin:14px 18px;background:#f6f7f9;color:#1d2330}
h1{font-size:20px;margin:0} h1 small{font-weight:normal;color:#555;font-size:14px}
#slo{color:#444;font-size:13px;margin:2px 0 10px}
.cards{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:10px}
.card{background:#fff;border:1px solid #d8dbe0;border-radius:6px;padding:4px 9px;min-width:60px;font-size:12px;color:#555}
.card b{display:block;font-size:21px;color:#1d2330} .card b small{font-size:12px;font-weight:normal;color:#555}
.card.bad b{color:#c0392b} .card.good b{color:#1e7d32}
#status{color:#b00;font-weight:bold}
#plan{background:#fff;border:1px solid #d8dbe0;border-left:4px solid #1f77b4;border-radius:6px;padding:6px 10px;font-size:13px;margin-bottom:10px}
#plan b{font-size:13px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:10px}
figure{margin:0;background:#fff;border:1px solid #d8dbe0;border-radius:6px;padding:6px 8px 4px}
figure h3{font-size:14px;margin:0 0 2px} figcaption{font-size:11.5px;color:#555;margin-top:2px}
canvas{width:100%;height:210px;display:block}
table{border-collapse:collapse;background:#fff;font-size:12px;margin-top:12px;width:100%}
caption{text-align:left;font-size:13px;padding:4px 0;color:#333} caption b{font-size:14px;color:#1d2330}
td,th{border:1px solid #d8dbe0;padding:3px 6px;text-align:left;vertical-align:top} th{background:#eef0f3}
td.why{max-width:430px} td.num{white-space:nowrap} .miss{color:#c0392b;font-weight:bold} .muted{color:#888}
</style></head><body>
<h1>dopd &mdash; <span id="model">?</span> <small id="policy"></small></h1>
<div id="slo">SLO: ?</div>
<div class="cards">
<div class="card">prefill<b id="prefill-count">-</b></div>
<div class="card">decode<b id="decode-count">-</b></div>
<div class="card">mixed<b id="mixed-count">-</b></div>
<div class="card">in flight<b id="in-flight">-</b></div>
<div class="card">arrivals<b><span id="arrivals">-</span> <small>req/s</small></b></div>
<div class="card">forecast<b><span id="forecast">-</span> <small>req/s</small></b></div>
<div class="card" id="c-ttft-card">TTFT p90<b id="ttft-p90">-</b></div>
<div class="card" id="c-tpot-card">TPOT p90<b id="tpot-p90">-</b></div>
<div class="card" id="c-att-card">SLO attainment<b id="attainment">-</b></div>
<div class="card">goodput<b><span id="goodput">-</span> <small>req/s</small></b></div>
<div class="card">switches<b id="switches">-</b></div>
<div class="card">finished<b id="finished">-</b></div>
<div class="card">rejected<b id="rejected">-</b></div>
</div><div id="status"></div>
<div id="plan"><b>Latest plan:</b> <span id="plan-text">waiting for the first plan</span></div>
<div class="grid">
<figure><h3>SLO attainment</h3><canvas id="c-att"></canvas><figcaption id="cap-att">Share of the requests that ended in each trailing window and met both SLOs (TTFT and TPOT); dashed: the attainment target.</figcaption></figure>
<figure><h3>Goodput</h3><canvas id="c-goodput"></canvas><figcaption id="cap-goodput">Requests per second that finished within both SLOs (green), against the arrival rate (grey): the gap is load served late or not at all.</figcaption></figure>
<figure><h3>Time to first token (TTFT)</h3><canvas id="c-ttft"></canvas><figcaption id="cap-ttft">P50 (solid) and P90 (dashed) TTFT of the requests finished in each trailing window; red dashed: the TTFT SLO.</figcaption></figure>
<figure><h3>Time per output token (TPOT)</h3><canvas id="c-tpot"></canvas><figcaption id="cap-tpot">P50 (solid) and P90 (dashed) TPOT of the requests finished in each trailing window; red dashed: the TPOT SLO.</figcaption></figure>
<figure><h3>Arrival rate and forecast</h3><canvas id="c-rate"></canvas><figcaption id="cap-rate">Observed arrivals per second (black) and the policy's forecast for its next interval (orange dashed) with the forecast's upper bound (shaded up to the dotted line).</figcaption></figure>
<figure><h3>P/D split</h3><canvas id="c-pd"></canvas><figcaption id="cap-pd">Active instances by role, stacked (prefill at the bottom, then decode, mixed); grey: instances draining, switching or starting. Vertical lines on every chart: role decisions (see the table below).</figcaption></figure>
<figure><h3>Requests in the system</h3><canvas id="c-load"></canvas><figcaption id="cap-load">Requests in flight at the front end (purple) and prompts waiting for a prefill on the workers (orange dashed).</figcaption></figure>
<figure><h3>KV cache in use</h3><canvas id="c-kv"></canvas><figcaption id="cap-kv">Largest share of KV cache blocks in use on one active decode (or mixed) instance (red) and on one prefill instance (blue dashed): decode memory running out stalls hand-offs.</figcaption></figure>
</div>
<table id="decisions-table"><caption id="decisions-caption"><b>Role decisions</b>, newest first: why each change was made (the forecast, and the predicted P90 latency and SLO attainment of the split before and after it), and what was observed in the <span class="settle">10</span> s before the decision and the <span class="settle">10</span> s after it took effect.</caption>
<thead><tr><th>time</th><th>instance</th><th>change</th><th>why</th><th>forecast (req/s)</th><th>predicted before</th><th>predicted after</th><th>observed before</th><th>observed after</th><th>status</th></tr></thead><tbody id="decisions"></tbody></table>
<table id="instances-table"><caption><b>Instances</b>: role and state now, requests the front end has placed on each (load), prompts waiting, decodes running, KV cache in use, restarts.</caption>
<thead><tr><th>id</th><th>role</th><th>state</th><th>load</th><th>waiting</th>
<th>decoding</th><th>KV used</th><th>restarts</th></tr></thead><tbody id="instances"></tbody></table>
<script>
"use strict";
const key = new URLSearchParams(location.search).get("key");
const headers = key ? {"Authorization": "Bearer " + key} : {};
const TZ = (Intl.DateTimeFormat().resolvedOptions().timeZone || "local").replace("Etc/", "");
const MIN_SPAN_S = 60, MAX_SPAN_S = 300;
function setText(id, v){ document.getElementById(id).textContent = v; }
function num(v){ return v != null && isFinite(v); }
function fmtS(v){ if (!num(v)) return "–"; return v < 1 ? (v * 1000).toFixed(0) + " ms" : v.toFixed(2) + " s"; }
function fmtPct(v){ return num(v) ? (100 * v).toFixed(0) + "%" : "–"; }
function fmtRate(v){ return num(v) ? (v >= 10 ? v.toFixed(1) : v.toFixed(2)) : "–"; }
function clock(wall){ return new Date(wall * 1000).toLocaleTimeString("en-GB", {hour12: false}); }
function niceStep(raw){ const p = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p; }
function decimals(step){ for (let d = 0; d < 4; d++) if (Math.abs(step * Math.pow(10, d) - Math.round(step * Math.pow(10, d))) < 1e-6) return d; return 3; }
// Draw one time chart. o: {ylabel, scale, minTop, integer, fixedTop, series, stack, band, refs, empty}
function chart(id, hist, xr, o){
  const c = document.getElementById(id), dpr = window.devicePixelRatio || 1;
  const W = c.clientWidth || 600, H = c.clientHeight || 210;
  c.width = W * dpr; c.height = H * dpr;
  const g = c.getContext("2d"); g.setTransform(dpr, 0, 0, dpr, 0, 0); g.clearRect(0, 0, W, H);
  const L = 62, R = 14, T = 24, B = 40, pw = W - L - R, ph = H - T - B, sc = o.scale || 1;
  const pts = hist.filter(h => h.wall >= xr.t0 - 2);
  let top = o.minTop;
  const val = (s, h) => { const v = s.get(h); return num(v) ? v * sc : null; };
  for (const s of (o.series || [])) for (const h of pts) { const v = val(s, h); if (v != null) top = Math.max(top, v * 1.1); }
  if (o.band) for (const h of pts) { const v = val({get: o.band.hi}, h); if (v != null) top = Math.max(top, v * 1.1); }
  if (o.stack) for (const h of pts) top = Math.max(top, o.stack.reduce((a, s) => a + (s.get(h) || 0), 0));
  for (const r of (o.refs || [])) if (num(r.value)) top = Math.max(top, r.value * sc * 1.2);
  if (o.fixedTop) top = o.fixedTop;
  let step = niceStep(top / 4); if (o.integer) step = Math.max(1, Math.round(step));
  top = Math.ceil(top / step - 1e-9) * step;
  const x = t => L + (t - xr.t0) / (xr.t1 - xr.t0) * pw, y = v => T + ph - v / top * ph;
  g.font = "12px system-ui,sans-serif"; g.lineWidth = 1;
  // grid and y ticks
  const dec = decimals(step);
  for (let v = 0; v <= top + step * 1e-6; v += step) {
    g.strokeStyle = v === 0 ? "#888" : "#e6e8eb"; g.beginPath(); g.moveTo(L, y(v)); g.lineTo(L + pw, y(v)); g.stroke();
    g.fillStyle = "#333"; g.textAlign = "right"; g.textBaseline = "middle"; g.fillText(v.toFixed(dec), L - 6, y(v)); }
  // x ticks on the wall clock
  const span = xr.t1 - xr.t0, xstep = [5, 10, 15, 30, 60, 120].find(s => span / s <= 6) || 300;
  g.textAlign = "center"; g.textBaseline = "top";
  for (let t = Math.ceil(xr.t0 / xstep) * xstep; t <= xr.t1 + 1e-6; t += xstep) {
    g.strokeStyle = "#e6e8eb"; g.beginPath(); g.moveTo(x(t), T); g.lineTo(x(t), T + ph); g.stroke();
    g.strokeStyle = "#888"; g.beginPath(); g.moveTo(x(t), T + ph); g.lineTo(x(t), T + ph + 4); g.stroke();
    const label = clock(t), half = g.measureText(label).width / 2;  // inside the canvas, clear of the y ticks
    if (x(t) - half < L - 10) continue;
    g.fillStyle = "#333"; g.fillText(label, Math.min(x(t), W - 2 - half), T + ph + 6); }
  g.strokeStyle = "#888"; g.beginPath(); g.moveTo(L, T); g.lineTo(L, T + ph); g.stroke();
  g.fillStyle = "#444"; g.fillText("time (" + TZ + ")", L + pw / 2, H - 15);
  g.save(); g.translate(13, T + ph / 2); g.rotate(-Math.PI / 2); g.textAlign = "center"; g.textBaseline = "middle"; g.fillText(o.ylabel, 0, 0); g.restore();
  g.save(); g.beginPath(); g.rect(L, T - 1, pw, ph + 2); g.clip();
  const legend = [];
  for (const m of (o.marks || [])) { if (m < xr.t0 || m > xr.t1) continue;
    g.strokeStyle = "rgba(60,60,60,0.55)"; g.lineWidth = 1; g.setLineDash([3, 3]); g.beginPath(); g.moveTo(x(m), T); g.lineTo(x(m), T + ph); g.stroke(); g.setLineDash([]);
    g.fillStyle = "rgba(60,60,60,0.75)"; g.beginPath(); g.moveTo(x(m) - 5, T); g.lineTo(x(m) + 5, T); g.lineTo(x(m), T + 7); g.fill(); }
  const labels = [];  // counts written on the stacked bands, drawn over all of them
  if (o.stack) {  // stacked step areas
    const base = pts.map(() => 0);
    for (const s of o.stack) {
      const tops = pts.map((h, i) => base[i] + (s.get(h) || 0));
      if (tops.some((v, i) => v > base[i])) {
        g.fillStyle = s.color; g.beginPath();
        pts.forEach((h, i) => { const xe = i + 1 < pts.length ? x(pts[i + 1].wall) : x(h.wall) + 1;
          if (i === 0) g.moveTo(x(h.wall), y(tops[i])); else g.lineTo(x(h.wall), y(tops[i])); g.lineTo(xe, y(tops[i])); });
        for (let i = pts.length - 1; i >= 0; i--) { const xe = i + 1 < pts.length ? x(pts[i + 1].wall) : x(pts[i].wall) + 1;
          g.lineTo(xe, y(base[i])); g.lineTo(x(pts[i].wall), y(base[i])); }
        g.closePath(); g.fill();
        const last = pts.length - 1, n = tops[last] - base[last];
        if (n > 0 && (y(base[last]) - y(tops[last])) >= 14) labels.push([n + " " + s.name, (y(base[last]) + y(tops[last])) / 2]);
      }
      pts.forEach((h, i) => { base[i] = tops[i]; });
      legend.push({name: s.name, color: s.color, fill: true});
    }
    g.font = "bold 12px system-ui,sans-serif"; g.textAlign = "right"; g.textBaseline = "middle";
    for (const [text, ly] of labels) { g.lineWidth = 3; g.strokeStyle = "rgba(0,0,0,0.35)"; g.strokeText(text, L + pw - 8, ly); g.fillStyle = "#fff"; g.fillText(text, L + pw - 8, ly); }
    g.font = "12px system-ui,sans-serif"; g.lineWidth = 1;
  }
  if (o.band) {  // shaded band between lo and hi
    g.fillStyle = o.band.color; let open = false, seg = [];
    const flush = () => { if (seg.length) { g.beginPath(); seg.forEach((p, i) => i ? g.lineTo(p[0], p[2]) : g.moveTo(p[0], p[2]));
      for (let i = seg.length - 1; i >= 0; i--) g.lineTo(seg[i][0], seg[i][1]); g.closePath(); g.fill(); } seg = []; };
    for (const h of pts) { const lo = val({get: o.band.lo}, h), hi = val({get: o.band.hi}, h);
      if (lo == null || hi == null) { flush(); continue; } seg.push([x(h.wall), y(lo), y(hi)]); }
    flush(); legend.push({name: o.band.name, color: o.band.color, fill: true});
  }
  for (const r of (o.refs || [])) { if (!num(r.value)) continue;
    g.strokeStyle = r.color; g.lineWidth = 1.5; g.setLineDash([7, 4]); g.beginPath(); g.moveTo(L, y(r.value * sc)); g.lineTo(L + pw, y(r.value * sc)); g.stroke(); g.setLineDash([]);
    g.fillStyle = r.color; g.textAlign = "left"; g.textBaseline = "bottom"; g.fillText(r.label, L + 6, y(r.value * sc) - 2); }
  let any = false;
  for (const s of (o.series || [])) {
    g.strokeStyle = s.color; g.fillStyle = s.color; g.lineWidth = s.width || 2; g.setLineDash(s.dash || []);
    g.beginPath(); let on = false; const marks = [];
    pts.forEach((h, i) => { const v = val(s, h); if (v == null) { on = false; return; } any = true;
      if (on) g.lineTo(x(h.wall), y(v)); else { g.moveTo(x(h.wall), y(v)); on = true; }
      if (s.marker && (i % Math.max(1, Math.round(pts.length / 15)) === 0 || i === pts.length - 1)) marks.push([x(h.wall), y(v)]); });
    g.stroke(); g.setLineDash([]);
    for (const [mx, my] of marks) { g.beginPath(); if (s.marker === "square") g.rect(mx - 3, my - 3, 6, 6); else g.arc(mx, my, 3, 0, 2 * Math.PI); g.fill(); }
    legend.push({name: s.name, color: s.color, dash: s.dash, width: s.width});
  }
  g.restore();
  if (o.series && !o.stack && !any) { g.fillStyle = "#999"; g.textAlign = "center"; g.textBaseline = "middle"; g.font = "13px system-ui,sans-serif";
    g.fillText(o.empty || "no data yet", L + pw / 2, T + ph / 2); g.font = "12px system-ui,sans-serif"; }
  let lx = L; g.textAlign = "left"; g.textBaseline = "middle";
  for (const e of legend) {
    if (e.fill) { g.fillStyle = e.color; g.fillRect(lx, 6, 14, 10); }
    else { g.strokeStyle = e.color; g.lineWidth = e.width || 2; g.setLineDash(e.dash || []); g.beginPath(); g.moveTo(lx, 11); g.lineTo(lx + 22, 11); g.stroke(); g.setLineDash([]); }
    g.fillStyle = "#222"; const w = e.fill ? 18 : 26; g.fillText(e.name, lx + w, 11); lx += w + g.measureText(e.name).width + 16; }
}
function cell(v, cls){ const td = document.createElement("td"); td.textContent = v == null ? "" : v; if (cls) td.className = cls; return td; }
function row(cells){ const tr = document.createElement("tr"); for (const v of cells) tr.appendChild(v instanceof Node ? v : cell(v)); return tr; }
function predText(p, slo){ if (!p) return "–"; const inf = p.overloaded ? "∞ ✗" : "–";
  const miss = (v, lim) => num(v) && slo && v > lim ? " ✗" : "";
  return "TTFT " + (num(p.ttft_p90_s) ? fmtS(p.ttft_p90_s) : inf) + miss(p.ttft_p90_s, slo && slo.ttft_s) +
    " · TPOT " + (num(p.tpot_p90_s) ? fmtS(p.tpot_p90_s) : inf) + miss(p.tpot_p90_s, slo && slo.tpot_s) + " · " + fmtPct(p.attainment); }
function obsText(o, slo){ if (!o) return "pending"; if (!o.finished) return "no request finished";
  const miss = (v, lim) => num(v) && slo && v > lim ? " ✗" : "";
  return "TTFT " + fmtS(o.ttft_p90_s) + miss(o.ttft_p90_s, slo && slo.ttft_s) + " · TPOT " + fmtS(o.tpot_p90_s) + miss(o.tpot_p90_s, slo && slo.tpot_s) +
    " · " + fmtPct(o.attainment) + " (" + o.finished + " req)"; }
function mark(id, bad){ const e = document.getElementById(id); e.classList.toggle("bad", bad === true); e.classList.toggle("good", bad === false); }
async function refresh(){
  let s;
  try {
    const r = await fetch("/v1/cluster", {headers});
    if (!r.ok) throw new Error("HTTP " + r.status);
    s = await r.json();
  } catch (e) { setText("status", "cannot reach the server: " + e.message); return; }
  setText("status", "");
  const slo = s.slo, w = s.window_s, h = s.history, last = h.length ? h[h.length - 1] : {};
  setText("model", s.model); setText("policy", s.policy + " / " + s.router + " / " + s.mode);
  setText("slo", (slo ? "SLO: TTFT p90 ≤ " + fmtS(slo.ttft_s) + ", TPOT p90 ≤ " + fmtS(slo.tpot_s) + ", attainment target " + fmtPct(slo.attainment) : "no SLO") +
    " · trailing window " + w + " s · uptime " + Math.round(s.time_s) + " s · updated " + clock(s.wall_s));
  for (const e of document.querySelectorAll(".settle")) e.textContent = s.settle_s;
  setText("prefill-count", s.counts.prefill); setText("decode-count", s.counts.decode);
  setText("mixed-count", s.counts.mixed); setText("in-flight", s.in_flight);
  setText("switches", s.role_switches); setText("finished", s.finished); setText("rejected", s.rejected);
  setText("arrivals", fmtRate(last.arrival_rps)); setText("forecast", s.forecast ? fmtRate(s.forecast.rate_rps) : "–");
  setText("ttft-p90", fmtS(last.ttft_p90)); setText("tpot-p90", fmtS(last.tpot_p90));
  setText("attainment", fmtPct(last.attainment)); setText("goodput", fmtRate(last.goodput_rps));
  mark("c-ttft-card", slo && num(last.ttft_p90) ? last.ttft_p90 > slo.ttft_s : null);
  mark("c-tpot-card", slo && num(last.tpot_p90) ? last.tpot_p90 > slo.tpot_s : null);
  mark("c-att-card", slo && num(last.attainment) ? last.attainment < slo.attainment : null);
  const t1 = num(last.wall) ? last.wall : s.wall_s, first = h.length ? h[0].wall : t1;
  const span = Math.min(MAX_SPAN_S, Math.max(MIN_SPAN_S, Math.ceil((t1 - first) / 30) * 30));
  const marks = s.decisions.filter(d => num(d.wall)).map(d => d.wall);
  const xr = {t0: t1 - span, t1: t1}, idle = "no request ended in the last " + w + " s";
  chart("c-att", h, xr, {marks, ylabel: "SLO attainment (%)", scale: 100, minTop: 100, fixedTop: 100, empty: idle,
    series: [{name: "attainment", color: "#1e7d32", get: p => p.attainment, marker: "circle"}],
    refs: slo ? [{value: slo.attainment, label: "target " + fmtPct(slo.attainment), color: "#c0392b"}] : []});
  chart("c-goodput", h, xr, {marks, ylabel: "requests / s", minTop: 1, empty: idle,
    series: [{name: "arrivals", color: "#999", get: p => p.arrival_rps, width: 1.5, dash: [2, 3]},
             {name: "goodput (within SLO)", color: "#1e7d32", get: p => p.goodput_rps, marker: "circle"}]});
  const idleF = "no request finished in the last " + w + " s";
  chart("c-ttft", h, xr, {marks, ylabel: "TTFT (s)", minTop: slo ? slo.ttft_s * 1.25 : 0.5, empty: idleF,
    series: [{name: "P50", color: "#1f77b4", get: p => p.ttft_p50}, {name: "P90", color: "#1f77b4", dash: [6, 3], get: p => p.ttft_p90, marker: "square"}],
    refs: slo ? [{value: slo.ttft_s, label: "SLO " + fmtS(slo.ttft_s), color: "#c0392b"}] : []});
  chart("c-tpot", h, xr, {marks, ylabel: "TPOT (ms)", scale: 1000, minTop: slo ? slo.tpot_s * 1250 : 100, empty: idleF,
    series: [{name: "P50", color: "#8e44ad", get: p => p.tpot_p50}, {name: "P90", color: "#8e44ad", dash: [6, 3], get: p => p.tpot_p90, marker: "square"}],
    refs: slo ? [{value: slo.tpot_s, label: "SLO " + fmtS(slo.tpot_s), color: "#c0392b"}] : []});
  const fc = s.forecast != null || h.some(p => num(p.forecast_rps));
  setText("cap-rate", "Observed arrivals per second over the trailing " + w + " s (black)" + (fc ?
    " and the policy's forecast for its next interval (orange dashed), with the forecast's upper bound (shaded up to the dotted line)." :
    ". Policy " + s.policy + " makes no forecast."));
  chart("c-rate", h, xr, {marks, ylabel: "arrivals (req/s)", minTop: 1, empty: "no data yet",
    band: fc ? {name: "forecast upper bound", color: "rgba(255,127,14,0.18)", lo: p => p.forecast_rps, hi: p => p.forecast_upper_rps} : null,
    series: [{name: "observed", color: "#222", get: p => p.arrival_rps, marker: "circle"}].concat(fc ? [
      {name: "forecast", color: "#ff7f0e", dash: [7, 4], get: p => p.forecast_rps},
      {name: "upper", color: "#ff7f0e", dash: [2, 3], width: 1.2, get: p => p.forecast_upper_rps}] : [])});
  const budget = s.instances.length;
  chart("c-pd", h, xr, {marks, ylabel: "instances", minTop: Math.max(1, budget), integer: true,
    stack: [{name: "prefill", color: "#1f77b4", get: p => p.prefill}, {name: "decode", color: "#d62728", get: p => p.decode},
            {name: "mixed", color: "#2ca02c", get: p => p.mixed}, {name: "in transition", color: "#aaa", get: p => p.transitioning || 0}]});
  chart("c-load", h, xr, {marks, ylabel: "requests", minTop: 4, integer: true, empty: "no data yet",
    series: [{name: "in flight", color: "#8e44ad", get: p => p.in_flight}, {name: "waiting for prefill", color: "#e67e22", dash: [6, 3], get: p => p.waiting}]});
  chart("c-kv", h, xr, {marks, ylabel: "KV cache in use (%)", scale: 100, minTop: 100, fixedTop: 100, empty: "no active instance reports its KV cache",
    series: [{name: "decode (largest)", color: "#d62728", get: p => p.kv_decode}, {name: "prefill (largest)", color: "#1f77b4", dash: [6, 3], get: p => p.kv_prefill}]});
  const p = s.plan;
  if (p) {
    const change = p.target && p.current && p.target !== p.current ? "running " + p.current + ", target " + p.target : "running " + (p.current || "?") + " (on target)";
    setText("plan-text", clock(s.wall_s - (s.time_s - p.t)) + " (" + p.policy + "): " + change + ". Why: " + p.why +
      (p.observed_next ? ". Observed over the next interval: " + obsText(p.observed_next, slo) : "") + ".");
  } else setText("plan-text", "policy " + s.policy + " keeps its split: it makes no forecast and no plan.");
  const tb = document.getElementById("instances"); tb.replaceChildren();
  for (const i of s.instances) { const st = i.stats || {};
    tb.appendChild(row([i.id, i.role + (i.target_role ? " → " + i.target_role : ""), i.state, i.load,
      st.waiting, st.decode_batch, st.kv_total_blocks ? (100 * st.kv_used_blocks / st.kv_total_blocks).toFixed(0) + "%" : "", i.restarts])); }
  const db = document.getElementById("decisions"); db.replaceChildren();
  if (!s.decisions.length) { const tr = row([cell("no role change yet: the split has held", "muted")]); tr.firstChild.colSpan = 10; db.appendChild(tr); }
  for (const d of s.decisions.slice().reverse()) {
    const pl = d.plan || {};
    const change = (d.from || "new") + " → " + (d.to || "stopped") + (pl.current && pl.target ? " (" + pl.current + " → " + pl.target + ")" : "");
    const fcText = num(pl.forecast_rps) ? fmtRate(pl.forecast_rps) + (num(pl.forecast_upper_rps) ? " (upper " + fmtRate(pl.forecast_upper_rps) + ")" : "") : "–";
    db.appendChild(row([cell(num(d.wall) ? clock(d.wall) : d.t + " s", "num"), d.instance, change, cell(d.reason + (d.source !== "policy" ? " [" + d.source + "]" : ""), "why"),
      cell(fcText, "num"), cell(pl.current ? pl.current + ": " + predText(pl.predicted_current, slo) : "–"),
      cell(pl.target ? pl.target + ": " + predText(pl.predicted_target, slo) : "–"),
      cell(obsText(d.observed_before, slo)), cell(obsText(d.observed_after, slo)), d.status]));
  }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
