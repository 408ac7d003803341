# ruff: noqa: E501  (the page is one inline HTML/JS document)
"""The live dashboard page: one self-contained HTML document (inline CSS and JS, no external
asset) that polls ``/v1/cluster`` every second and draws P/D counts, load, TTFT and TPOT over
time on canvases, with the instance table and the recent role decisions. An API key, when the
server needs one, is passed as ``/dashboard?key=...``."""

from __future__ import annotations

DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dopd dashboard</title>
<style>
body{font-family:system-ui,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px;margin:0 0 8px} .cards{display:flex;gap:12px;margin-bottom:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:90px}
.card b{display:block;font-size:26px} .grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
canvas{background:#fff;border:1px solid #ddd;border-radius:6px;width:100%;height:180px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin-top:12px;width:100%}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:left} #status{color:#a00}
</style></head><body>
<h1>dopd &mdash; <span id="model">?</span> <small id="policy"></small></h1>
<div class="cards">
<div class="card">prefill<b id="prefill-count">-</b></div>
<div class="card">decode<b id="decode-count">-</b></div>
<div class="card">mixed<b id="mixed-count">-</b></div>
<div class="card">in flight<b id="in-flight">-</b></div>
<div class="card">switches<b id="switches">-</b></div>
<div class="card">finished<b id="finished">-</b></div>
<div class="card">rejected<b id="rejected">-</b></div>
</div><div id="status"></div>
<div class="grid">
<div><div>P/D instances</div><canvas id="c-pd" width="600" height="180"></canvas></div>
<div><div>requests in flight</div><canvas id="c-load" width="600" height="180"></canvas></div>
<div><div>TTFT p50 (s)</div><canvas id="c-ttft" width="600" height="180"></canvas></div>
<div><div>TPOT p50 (s)</div><canvas id="c-tpot" width="600" height="180"></canvas></div>
</div>
<table><thead><tr><th>id</th><th>role</th><th>state</th><th>load</th><th>waiting</th>
<th>decoding</th><th>KV used</th><th>restarts</th></tr></thead><tbody id="instances"></tbody></table>
<table><thead><tr><th>t (s)</th><th>instance</th><th>from</th><th>to</th><th>source</th>
<th>reason</th><th>status</th></tr></thead><tbody id="decisions"></tbody></table>
<script>
"use strict";
const key = new URLSearchParams(location.search).get("key");
const headers = key ? {"Authorization": "Bearer " + key} : {};
function setText(id, v){ document.getElementById(id).textContent = v; }
function draw(id, hist, series){
  const c = document.getElementById(id), g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  if (hist.length < 1) return;
  const t0 = hist[0].t, t1 = Math.max(hist[hist.length-1].t, t0 + 1);
  let ymax = 1e-9;
  for (const s of series) for (const h of hist) { const v = s.get(h); if (v != null) ymax = Math.max(ymax, v); }
  ymax *= 1.15;
  g.strokeStyle = "#ccc"; g.beginPath(); g.moveTo(30, 5); g.lineTo(30, c.height-15);
  g.lineTo(c.width-5, c.height-15); g.stroke();
  g.fillStyle = "#666"; g.font = "11px sans-serif";
  g.fillText(ymax.toPrecision(2), 2, 12); g.fillText((t1 - t0).toFixed(0) + " s", c.width-40, c.height-3);
  const x = t => 30 + (t - t0) / (t1 - t0) * (c.width - 40);
  const y = v => c.height - 15 - v / ymax * (c.height - 25);
  series.forEach((s, k) => {
    g.strokeStyle = s.color; g.lineWidth = 2; g.beginPath(); let on = false;
    for (const h of hist) { const v = s.get(h); if (v == null) { on = false; continue; }
      if (on) g.lineTo(x(h.t), y(v)); else { g.moveTo(x(h.t), y(v)); on = true; } }
    g.stroke(); g.fillStyle = s.color; g.fillText(s.name, 40 + 70 * k, 14);
  });
}
function row(cells){ const tr = document.createElement("tr");
  for (const v of cells){ const td = document.createElement("td"); td.textContent = v == null ? "" : v; tr.appendChild(td); }
  return tr; }
async function refresh(){
  try {
    const r = await fetch("/v1/cluster", {headers});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    setText("model", s.model); setText("policy", s.policy + " / " + s.router + " / " + s.mode);
    setText("prefill-count", s.counts.prefill); setText("decode-count", s.counts.decode);
    setText("mixed-count", s.counts.mixed); setText("in-flight", s.in_flight);
    setText("switches", s.role_switches); setText("finished", s.finished); setText("rejected", s.rejected);
    setText("status", "");
    const h = s.history;
    draw("c-pd", h, [{name:"prefill", color:"#1f77b4", get:p=>p.prefill},
                     {name:"decode", color:"#d62728", get:p=>p.decode},
                     {name:"mixed", color:"#2ca02c", get:p=>p.mixed}]);
    draw("c-load", h, [{name:"in flight", color:"#9467bd", get:p=>p.in_flight}]);
    draw("c-ttft", h, [{name:"TTFT", color:"#ff7f0e", get:p=>p.ttft_p50}]);
    draw("c-tpot", h, [{name:"TPOT", color:"#8c564b", get:p=>p.tpot_p50}]);
    const tb = document.getElementById("instances"); tb.replaceChildren();
    for (const i of s.instances) { const st = i.stats || {};
      tb.appendChild(row([i.id, i.role + (i.target_role ? " -> " + i.target_role : ""), i.state, i.load,
        st.waiting, st.decode_batch, st.kv_total_blocks ? (100*st.kv_used_blocks/st.kv_total_blocks).toFixed(0)+"%" : "", i.restarts])); }
    const db = document.getElementById("decisions"); db.replaceChildren();
    for (const d of s.decisions.slice().reverse()) db.appendChild(row([d.t, d.instance, d.from, d.to, d.source, d.reason, d.status]));
  } catch (e) { setText("status", "cannot reach the server: " + e.message); }
}
refresh(); setInterval(refresh, 1000);
</script></body></html>
"""
