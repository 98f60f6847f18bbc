"""A self-contained static HTML dashboard comparing result files from several machines/dates.

    python -m bench dashboard bench/results/*.json -o dashboard.html

No network, no external scripts: the data is embedded as JSON and rendered by a few lines of
inline JavaScript (filters by kind — CBAM blocks or whole networks — dtype / layout / provider, a
table with one column per result file, and bars of the chosen metric). Network rows (``--models``)
sit beside the block rows; their metrics include the CBAM blocks' share of the network's traffic and
latency.
"""

from __future__ import annotations

import html
import json
from typing import Any

from bench.report import validate

_KEEP = ("id", "shape_name", "batch", "dtype", "layout", "provider", "status", "median_ms", "p20_ms", "p80_ms",
         "speedup_vs_eager", "schedule", "traffic_x", "dram_model_x", "ncu_dram_x",
         "launches", "floor_gbps", "frac_copy_bw", "peak_mem_bytes", "note",
         "kind", "speedup_vs_compile", "cbam_traffic_share", "cbam_latency_share", "cbam_vs_floor", "traffic_bytes")

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cbam-triton benchmark dashboard</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px;margin-top:1em}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
td:first-child,td:nth-child(2),th{text-align:left}
th{background:#f0f0f0}.bad{color:#b00}.bar{background:#4a7bd0;height:9px;display:inline-block}
.src{font-size:12px;color:#555}
</style></head><body>
<h1>cbam-triton benchmark dashboard</h1>
<div class="src">__SOURCES__</div>
<p>Filters: kind <select id="f-kind"></select> dtype <select id="f-dtype"></select>
layout <select id="f-layout"></select>
provider <select id="f-provider"></select> metric <select id="f-metric">
<option value="median_ms">median ms</option><option value="speedup_vs_eager">speedup vs eager</option>
<option value="traffic_x">traffic (|x|)</option><option value="floor_gbps">GB/s (floor traffic)</option>
<option value="frac_copy_bw">fraction of copy bandwidth</option>
<option value="speedup_vs_compile">networks: speedup vs compile</option>
<option value="cbam_traffic_share">networks: CBAM share of traffic</option>
<option value="cbam_latency_share">networks: CBAM share of latency</option>
<option value="cbam_vs_floor">networks: CBAM bytes / 2|x| floor</option></select></p>
<table id="t"></table>
<script id="data" type="application/json">__DATA__</script>
<script>
const runs = JSON.parse(document.getElementById('data').textContent);
const rows = [];
runs.forEach((run, i) => run.results.forEach(r => rows.push(Object.assign({run: i}, r,
  {kind: r.kind === 'model' ? 'network' : 'block'}))));
function opts(id, key){const s=document.getElementById(id);const v=[...new Set(rows.map(r=>r[key]))];
  s.innerHTML='<option value="">all</option>'+v.map(x=>'<option>'+x+'</option>').join('');s.onchange=render;}
opts('f-kind','kind');opts('f-dtype','dtype');opts('f-layout','layout');opts('f-provider','provider');
document.getElementById('f-metric').onchange=render;
function val(id){return document.getElementById(id).value;}
function render(){
  const m=val('f-metric');
  const sel=rows.filter(r=>(!val('f-kind')||r.kind==val('f-kind'))
    &&(!val('f-dtype')||r.dtype==val('f-dtype'))&&(!val('f-layout')||r.layout==val('f-layout'))
    &&(!val('f-provider')||r.provider==val('f-provider')));
  const keys=[...new Set(sel.map(r=>r.id+'|'+r.provider))];
  const max=Math.max(1e-12,...sel.map(r=>typeof r[m]==='number'?r[m]:0));
  let h='<tr><th>case</th><th>provider</th>'+runs.map((r,i)=>'<th>#'+(i+1)+' '+r.env.device_name+'<br>'+
    r.env.date.slice(0,10)+'</th>').join('')+'</tr>';
  keys.forEach(k=>{const [id,p]=k.split('|');h+='<tr><td>'+id+'</td><td>'+p+'</td>';
    runs.forEach((run,i)=>{const r=sel.find(x=>x.run==i&&x.id==id&&x.provider==p);
      if(!r){h+='<td></td>';return;}
      if(typeof r[m]!=='number'){const bad=(r.status=='mismatch'||r.status=='error')?'bad':'';
        h+='<td class="'+bad+'">'+r.status+'</td>';return;}
      h+='<td>'+r[m].toPrecision(4)+' <span class="bar" style="width:'+Math.round(80*r[m]/max)+'px"></span></td>';});
    h+='</tr>';});
  document.getElementById('t').innerHTML=h;}
render();
</script></body></html>
"""


def build_dashboard(docs: list[dict[str, Any]]) -> str:
    """The dashboard HTML for result documents (each validated first)."""
    slim = []
    sources = []
    for i, doc in enumerate(docs):
        problems = validate(doc)
        if problems:
            raise ValueError(f"result file #{i + 1} is not a valid result document: {problems[:3]}")
        env = doc["env"]
        slim.append({"env": {k: env.get(k) for k in ("device_name", "date", "torch", "triton", "git_sha", "driver")},
                     "results": [{k: r.get(k) for k in _KEEP} for r in doc["results"]]})
        sources.append(f"#{i + 1}: {html.escape(str(env['device_name']))}, {html.escape(env['date'])}, "
                       f"torch {html.escape(env['torch'])}, triton {html.escape(env['triton'])}, "
                       f"git {html.escape(str(env['git_sha']))}")
    data = json.dumps(slim).replace("</", "<\\/")
    return _TEMPLATE.replace("__SOURCES__", "<br>".join(sources)).replace("__DATA__", data)


def write_dashboard(docs: list[dict[str, Any]], path: str) -> None:
    with open(path, "w") as f:
        f.write(build_dashboard(docs))
