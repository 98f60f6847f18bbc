/* cbam-triton benchmark dashboard: renders the embedded JSON (bench/dashboard/__init__.py) with uPlot. */
(function () {
  'use strict';
  window.addEventListener('error', function (e) {
    var box = document.getElementById('script-error');
    box.hidden = false;
    box.textContent = 'The dashboard\'s script failed: ' + (e.message || e);
  });
  window.dashboardStartMs = performance.now();
  var D = JSON.parse(document.getElementById('data').textContent);
  D.rows = D.rows.values.map(function (v) {  // columnar in the page: one object per row here
    var r = {};
    D.rows.columns.forEach(function (c, i) { if (v[i] !== null) r[c] = v[i]; });
    return r;
  });
  var $ = function (id) { return document.getElementById(id); };
  var FILTERS = ['kind', 'device', 'dtype', 'layout', 'mode', 'provider'];
  var KEYS = ['new', 'base'].concat(FILTERS, ['metric', 'case']);
  // metric: [label, +1 higher is better / -1 lower is better, needs a timing]
  var METRICS = {
    median_ms: ['median ms', -1, true], speedup_vs_eager: ['speedup over eager', 1, true],
    speedup_vs_compile: ['speedup over torch.compile', 1, true], traffic_x: ['traffic (|x|)', -1, false],
    dram_model_x: ['DRAM model (|x|)', -1, false], ncu_dram_x: ['DRAM, ncu (|x|)', -1, false],
    floor_gbps: ['GB/s counting 2|x|', 1, true], frac_copy_bw: ['fraction of copy bandwidth', 1, true],
    compile_s: ['compile s (cold)', -1, false], peak_mem_bytes: ['peak memory', -1, false],
    alloc_bytes: ['bytes allocated per call', -1, false],
    cbam_traffic_share: ['networks: CBAM share of traffic', -1, false],
    cbam_latency_share: ['networks: CBAM share of latency', -1, true],
    cbam_vs_floor: ['networks: CBAM bytes / 2|x| floor', -1, false]
  };
  var TIMED = {median_ms: 1, p20_ms: 1, p80_ms: 1, speedup_vs_eager: 1, speedup_vs_compile: 1, floor_gbps: 1,
    model_gbps: 1, frac_copy_bw: 1, cbam_latency_share: 1, base_median_ms: 1};
  var PALETTE = ['#1f6fd1', '#e8590c', '#2f9e44', '#ae3ec9', '#c92a2a', '#0c8599', '#f08c00', '#5c7cfa',
    '#66a80f', '#d6336c', '#495057', '#15aabf'];
  var TIMING_LABEL = {timed: 'timed', verified: 'verified (not timed)', not_measured: 'not measured'};
  var state = {};
  var charts = {};
  window.dashboardCharts = charts;
  window.dashboardColor = function (p) { return color(p); };

  function esc(s) {
    return String(s === undefined || s === null ? '' : s).replace(/[&<>"']/g, function (c) {
      return {'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c];
    });
  }
  function isNum(v) { return typeof v === 'number' && isFinite(v); }
  function color(p) { var i = D.providers.indexOf(p); return PALETTE[(i < 0 ? 0 : i) % PALETTE.length]; }
  function fmtBytes(v) {
    if (v >= 1 << 30) return (v / (1 << 30)).toFixed(2) + ' GiB';
    if (v >= 1 << 20) return (v / (1 << 20)).toFixed(2) + ' MiB';
    if (v >= 1 << 10) return (v / (1 << 10)).toFixed(1) + ' KiB';
    return v + ' B';
  }
  function fmt(key, v) {
    if (!isNum(v)) return '';
    if (/_bytes$/.test(key)) return fmtBytes(v);
    if (/share$/.test(key) || key === 'pass_rate' || /^fast_p/.test(key)) return (100 * v).toFixed(1) + ' %';
    if (/^speedup|^geomean|memory_ratio/.test(key)) return (v >= 0.1 ? v.toFixed(2) : v.toPrecision(2)) + '\u00d7';
    if (/_s$|_s_cold$|_s_warm$/.test(key)) return v.toFixed(2) + ' s';
    if (/_ms$/.test(key)) return v.toPrecision(4);
    if (/max_abs_err/.test(key)) return v.toExponential(1);
    if (Number.isInteger(v)) return String(v);
    return v.toPrecision(4);
  }
  function failed(r) { return r.status === 'fail_accuracy' || r.status === 'fail_to_run'; }
  /* a row's value of a metric as {text, cls, value}: never a zero for what was not measured */
  function cell(r, key) {
    if (!r) return {text: '', cls: '', value: null};
    if (isNum(r[key])) return {text: fmt(key, r[key]), cls: '', value: r[key]};
    if (failed(r)) return {text: r.status.replace(/_/g, ' '), cls: 's-fail', value: null};
    if (r.status === 'skipped') return {text: 'skipped', cls: 't-not_measured', value: null};
    if (r.status === 'modelled') return {text: 'modelled', cls: 't-not_measured', value: null};
    if (TIMED[key] && r.timing === 'verified') return {text: 'verified', cls: 't-verified', value: null};
    return {text: 'not measured', cls: 't-not_measured', value: null};
  }
  function td(c, extra) { return '<td class="' + c.cls + '"' + (extra || '') + '>' + esc(c.text) + '</td>'; }
  function runOf(r) { return D.runs[r.run]; }
  function match(r, skip) {
    for (var i = 0; i < FILTERS.length; i++) {
      var f = FILTERS[i];
      if (f === skip || !state[f]) continue;
      if (String(r[f]) !== state[f]) return false;
    }
    return true;
  }
  function runRows(run) { return D.rows.filter(function (r) { return r.run === run && match(r); }); }
  function uniq(a) {
    var seen = new Set(), out = [];
    a.forEach(function (x) { if (!seen.has(x)) { seen.add(x); out.push(x); } });
    return out;
  }
  /* the first row of each key (default: case|provider) */
  function index(rows, key) {
    var m = new Map();
    rows.forEach(function (r) { var k = key ? key(r) : r.id + '|' + r.provider; if (!m.has(k)) m.set(k, r); });
    return m;
  }

  /* ---- URL state ---- */
  function defaults() {
    var n = D.runs.length - 1;
    return {new: String(n), base: String(Math.max(0, n - 1)), metric: 'median_ms'};
  }
  function readUrl() {
    state = defaults();
    var h = location.hash.replace(/^#/, '');
    h.split('&').forEach(function (kv) {
      if (!kv) return;
      var i = kv.indexOf('=');
      var k = decodeURIComponent(i < 0 ? kv : kv.slice(0, i)), v = i < 0 ? '' : decodeURIComponent(kv.slice(i + 1));
      if (KEYS.indexOf(k) >= 0) state[k] = v;
    });
    if (!D.runs[+state.new]) state.new = defaults().new;
    if (!D.runs[+state.base]) state.base = defaults().base;
    if (!METRICS[state.metric]) state.metric = 'median_ms';
  }
  function query() {
    return KEYS.filter(function (k) { return state[k]; }).map(function (k) {
      return k + '=' + encodeURIComponent(state[k]);
    }).join('&');
  }
  function writeUrl() {
    var h = '#' + query();
    if (location.hash === h) return;
    try { history.replaceState(null, '', h); } catch (e) { location.replace(h); }
  }

  /* ---- filters ---- */
  function fill(id, values, labels, allLabel) {
    var s = $(id), key = id.slice(2);
    var html = allLabel === null ? '' : '<option value="">' + esc(allLabel || 'all') + '</option>';
    values.forEach(function (v, i) { html += '<option value="' + esc(v) + '">' + esc(labels ? labels[i] : v) + '</option>'; });
    s.innerHTML = html;
    if (state[key] && values.indexOf(state[key]) < 0) {  // a value from a link that this page lacks: keep it visible
      s.insertAdjacentHTML('beforeend', '<option value="' + esc(state[key]) + '">' + esc(state[key]) + ' (none)</option>');
    }
    s.value = state[key] || '';
  }
  function setupFilters() {
    var runIdx = D.runs.map(function (r) { return String(r.index); });
    var runLab = D.runs.map(function (r) { return r.label; });
    fill('f-new', runIdx, runLab, null);
    fill('f-base', runIdx, runLab, null);
    FILTERS.forEach(function (f) {
      fill('f-' + f, uniq(D.rows.map(function (r) { return String(r[f]); })));
    });
    fill('f-metric', Object.keys(METRICS), Object.keys(METRICS).map(function (k) { return METRICS[k][0]; }), null);
    var caseKeys = uniq(D.rows.filter(function (r) { return r.run === +state.new; }).map(function (r) {
      return r.id + '|' + r.provider;
    }));
    fill('f-case', caseKeys, caseKeys.map(function (k) { return k.replace('|', ' \u00b7 '); }), '(none)');
  }
  function onFilter(e) {
    var key = e.target.id.slice(2);
    state[key] = e.target.value;
    if (key === 'device' && state.device) {  // show runs of that device
      var mine = D.runs.filter(function (r) { return String(r.env.device_name) === state.device; });
      if (mine.length && String(D.runs[+state.new].env.device_name) !== state.device) {
        state.new = String(mine[mine.length - 1].index);
        state.base = String(mine[Math.max(0, mine.length - 2)].index);
      }
    }
    update();
  }

  /* ---- headline ---- */
  function verdictClass(s) { return s === 'met' ? 'v-met' : s === 'missed' ? 'v-missed' : 'v-not'; }
  function renderTargets() {
    var html = '';
    D.headline.filter(function (h) { return !state.device || h.device === state.device; }).forEach(function (h) {
      [['targets', 'Speed targets (fp16 forward, ResNet-50 shapes)', h.targets_run],
        ['goals', 'Network goals', h.goals_run]].forEach(function (part) {
        var list = h[part[0]];
        if (!list || !list.length) return;
        var counts = {met: 0, missed: 0, 'not measured': 0};
        list.forEach(function (v) { counts[v.status] = (counts[v.status] || 0) + 1; });
        html += '<h3>' + esc(part[1]) + ' on ' + esc(h.device) + ' <span class="sub">' +
          esc(D.runs[part[2]].label) + ' \u2014 ' + counts.met + ' met, ' + counts.missed + ' missed, ' +
          counts['not measured'] + ' not measured</span></h3>';
        html += '<table class="targets" data-device="' + esc(h.device) + '"><tr><th class="l">target</th><th>status</th>' +
          '<th class="l">worst case</th><th class="l">cases met / why not measured</th></tr>';
        list.forEach(function (v) {
          var worst = v.worst === null || v.worst === undefined ? '' : (v.worst.toFixed(2) + ' ' + v.unit + ' (goal ' +
            v.goal + ')' + (v.worst_case ? ' \u2014 ' + v.worst_case.id : ''));
          var met = v.cases && v.cases.length ? v.cases.filter(function (c) { return c.met; }).length + '/' +
            v.cases.length : v.why;
          html += '<tr data-status="' + esc(v.status) + '"><td class="l">' + esc(v.target) +
            '</td><td><span class="verdict ' + verdictClass(v.status) + '">' + esc(v.status) + '</span></td><td class="l">' +
            esc(worst) + '</td><td class="l">' + esc(met) + '</td></tr>';
        });
        html += '</table>';
      });
    });
    $('targets').innerHTML = html || '<p class="empty">no run of this device has block or network rows</p>';
  }
  var TILE_ROWS = [['pass_rate', 'pass rate'], ['geomean_speedup', 'geomean \u00d7 eager'],
    ['geomean_vs_compile', 'geomean \u00d7 compile'], ['fast_p_0', 'fast_0'], ['fast_p_1', 'fast_1'],
    ['fast_p_1.5', 'fast_1.5'], ['fast_p_2', 'fast_2'], ['compile_s_cold', 'compile (cold)'],
    ['compile_s_warm', 'compile (warm)'], ['memory_ratio', 'memory ratio']];
  function renderTiles() {
    var run = D.runs[+state.new], kind = state.kind || 'all';
    var sums = run.summary[kind] || {};
    $('tiles-title').textContent = 'Providers \u2014 ' + run.label + ' (' + (state.kind ? state.kind + ' rows' :
      'all rows') + ')';
    var html = '';
    Object.keys(sums).filter(function (p) { return !state.provider || p === state.provider; }).forEach(function (p) {
      var s = sums[p];
      html += '<div class="tile" data-provider="' + esc(p) + '"><h4 style="color:' + color(p) + '">' + esc(p) +
        '</h4><dl>';
      TILE_ROWS.forEach(function (t) {
        var v = /^fast_p_/.test(t[0]) ? (s.fast_p ? s.fast_p[t[0].slice(7)] : null) : s[t[0]];
        var txt = isNum(v) ? fmt(t[0], v) : 'not measured';
        if (t[0] === 'pass_rate' && isNum(v) && isNum(s.cases)) txt += ' (' + s.passed + '/' + s.cases + ')';
        html += '<dt>' + t[1] + '</dt><dd data-key="' + t[0] + '" data-value="' + (isNum(v) ? v : '') + '" class="' +
          (isNum(v) ? '' : 'nm') + '">' + esc(txt) + '</dd>';
      });
      html += '</dl><div class="src">' + esc(s.source || '') + (s.memory_basis ? '; memory: ' + s.memory_basis : '') +
        (isNum(s.timed) ? '; ' + s.timed + ' timed row(s)' : '') + '</div></div>';
    });
    $('tiles').innerHTML = html || '<p class="empty">no rows for this selection</p>';
  }
  function renderNetworks() {
    var rows = runRows(+state.new).filter(function (r) { return r.kind === 'network'; });
    if (!rows.length) { $('networks').innerHTML = ''; return; }
    var cols = ['median_ms', 'speedup_vs_eager', 'speedup_vs_compile', 'cbam_traffic_share', 'cbam_latency_share',
      'cbam_vs_floor', 'compile_s'];
    var html = '<h3>Whole networks (CBAM share of traffic and latency)</h3><div class="scroll"><table id="network-table">' +
      '<tr><th class="l">network</th><th class="l">provider</th><th class="l">status</th>' +
      cols.map(function (c) { return '<th>' + esc((METRICS[c] || [c])[0].replace('networks: ', '')) + '</th>'; }).join('') +
      '</tr>';
    rows.forEach(function (r) {
      html += '<tr class="t-' + r.timing + (failed(r) ? ' s-fail' : '') + '"><td class="l">' + esc(r.id) + '</td><td class="l">' +
        esc(r.provider) + '</td><td class="l">' + esc(r.status + ', ' + TIMING_LABEL[r.timing]) + '</td>' +
        cols.map(function (c) { return td(cell(r, c)); }).join('') + '</tr>';
    });
    $('networks').innerHTML = html + '</table></div>';
  }

  /* ---- charts ---- */
  function chart(id, opts, data, empty) {
    if (charts[id]) { charts[id].destroy(); delete charts[id]; }
    var el = $(id);
    el.innerHTML = '';
    if (!data) { el.innerHTML = '<p class="empty">' + esc(empty) + '</p>'; return; }
    opts.width = Math.max(320, (el.clientWidth || 560) - 4);
    opts.height = opts.height || 260;
    charts[id] = new uPlot(opts, data, el);
  }
  function shortId(s) { return s.length > 26 ? s.slice(0, 25) + '\u2026' : s; }
  function categoryAxis(cats) {
    return {splits: function () { return cats.map(function (_, i) { return i; }); },
      values: function (u, sp) { return sp.map(function (i) { return cats[i] === undefined ? '' : shortId(cats[i]); }); },
      rotate: -30, size: 110, font: '10px system-ui', gap: 2};
  }
  function dotSeries(p) {
    return {label: p, stroke: color(p), fill: color(p), paths: function () { return null; },
      points: {show: true, size: 9, fill: color(p), stroke: color(p)}};
  }
  function renderHeatmap() {
    var rows = runRows(+state.new);
    var cases = uniq(rows.map(function (r) { return r.id; }));
    var provs = uniq(rows.map(function (r) { return r.provider; }));
    if (!rows.length) { $('heatmap').innerHTML = '<p class="empty">no rows for this selection</p>'; return; }
    var idx = index(rows);
    var html = '<table><tr><th class="l">case</th>' + provs.map(function (p) { return '<th>' + esc(p) + '</th>'; }).join('') + '</tr>';
    cases.forEach(function (c) {
      html += '<tr><td class="l">' + esc(c) + '</td>';
      provs.forEach(function (p) {
        var r = idx.get(c + '|' + p);
        var cl = cell(r, 'speedup_vs_eager'), style = '';
        if (isNum(cl.value)) {
          var t = Math.max(-1, Math.min(1, Math.log2(cl.value) / 2));
          style = t >= 0 ? 'background:rgba(47,158,68,' + (0.12 + 0.7 * t).toFixed(2) + ')' :
            'background:rgba(201,42,42,' + (0.12 - 0.7 * t).toFixed(2) + ')';
        }
        html += '<td class="hm ' + (r ? (cl.cls || 't-' + r.timing) : '') + '" style="' + style + '" data-case="' + esc(c) +
          '" data-provider="' + esc(p) + '">' + esc(r ? cl.text : '') + '</td>';
      });
      html += '</tr>';
    });
    $('heatmap').innerHTML = html + '</table>';
  }
  function renderLatency() {
    var kind = state.kind || 'block', mode = state.mode || 'forward';
    $('latency-scope').textContent = kind + ' rows, ' + mode + (state.mode ? '' : ' (pick a mode to change)');
    var rows = runRows(+state.new).filter(function (r) {
      return r.timing === 'timed' && isNum(r.median_ms) && r.kind === kind && r.mode === mode;
    });
    var xs = uniq(rows.map(function (r) { return r.x_bytes; })).sort(function (a, b) { return a - b; });
    var provs = uniq(rows.map(function (r) { return r.provider; }));
    if (!rows.length) {
      $('latency-legend').innerHTML = '';
      return chart('chart-latency', {}, null, 'no timed rows for this selection (a Triton provider on a CPU is verified ' +
        'in the interpreter, not timed)');
    }
    var data = [xs], series = [{label: 'x bytes', value: function (u, v) { return isNum(v) ? fmtBytes(v) : ''; }}], bands = [];
    var groups = new Map();
    rows.forEach(function (r) {
      var k = r.provider + '|' + r.x_bytes;
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(r);
    });
    provs.forEach(function (p) {
      var mean = function (key) {
        return xs.map(function (x) {
          var v = (groups.get(p + '|' + x) || []).filter(function (r) { return isNum(r[key]); })
            .map(function (r) { return r[key]; });
          return v.length ? v.reduce(function (a, b) { return a + b; }, 0) / v.length : null;
        });
      };
      var c = color(p), base = data.length;
      data.push(mean('median_ms'), mean('p80_ms'), mean('p20_ms'));
      series.push({label: p, stroke: c, width: 2, points: {show: true, size: 6, fill: c}, spanGaps: true},
        {label: p + ' p80', stroke: c + '66', width: 1, spanGaps: true, points: {show: false}},
        {label: p + ' p20', stroke: c + '66', width: 1, spanGaps: true, points: {show: false}});
      bands.push({series: [base + 1, base + 2], fill: c + '22'});
    });
    var log = xs.length > 1;
    $('latency-legend').innerHTML = provs.map(function (p) {
      return '<span><i style="background:' + color(p) + '"></i>' + esc(p) + '</span>';
    }).join('') + '<span class="sub">band: p20\u2013p80</span>';
    chart('chart-latency', {scales: {x: {time: false, distr: log ? 3 : 1}, y: {distr: 3}}, series: series, bands: bands,
      axes: [{values: function (u, v) { return v.map(function (x) { return isNum(x) ? fmtBytes(x) : ''; }); },
        label: 'tensor size |x| (note: several cases of one size are averaged)', labelSize: 20},
      {label: 'ms', labelSize: 20}], legend: {show: false}}, data);
  }
  function categoryChart(id, rows, key, floor, floorLabel, empty) {
    var cats = uniq(rows.map(function (r) { return r.id; }));
    var provs = uniq(rows.map(function (r) { return r.provider; }));
    if (!rows.length) return chart(id, {}, null, empty);
    var data = [cats.map(function (_, i) { return i; })], series = [{label: 'case',
      value: function (u, v) { return cats[v] === undefined ? '' : cats[v]; }}];
    var idx = index(rows), first = index(rows, function (r) { return r.id; });
    provs.forEach(function (p) {
      data.push(cats.map(function (c) {
        var r = idx.get(c + '|' + p);
        return r ? key(r) : null;
      }));
      series.push(dotSeries(p));
    });
    data.push(cats.map(function (c) { return floor(first.get(c)); }));
    series.push({label: floorLabel, stroke: '#212529', width: 2, dash: [6, 4], points: {show: false}});
    chart(id, {scales: {x: {time: false, range: [-0.5, cats.length - 0.5]}, y: {range: function (u, lo, hi) {
      return [0, (hi || 1) * 1.1]; }}}, series: series, axes: [categoryAxis(cats), {}], height: 300,
    legend: {live: false}}, data);
  }
  function trafficOf(r) {
    return isNum(r.ncu_dram_x) ? r.ncu_dram_x : isNum(r.dram_model_x) ? r.dram_model_x : isNum(r.traffic_x) ? r.traffic_x : null;
  }
  function renderTraffic() {
    var rows = runRows(+state.new).filter(function (r) { return r.kind === 'block' && trafficOf(r) !== null; });
    var floorX = D.runs[+state.new].floor_x || {};
    categoryChart('chart-traffic', rows, trafficOf, function (r) { return floorX[r.mode] || 2; },
      'floor (2|x| / 5|x|)', 'no block rows with a traffic figure for this selection');
  }
  function renderCopyBw() {
    var run = D.runs[+state.new];
    var rows = runRows(+state.new).filter(function (r) { return isNum(r.frac_copy_bw); });
    var why = run.env.device_type === 'cuda' ? 'no timed GPU rows with a copy-bandwidth figure for this selection' :
      'not yet measured on a GPU (this run is a ' + run.env.device_type + ' run)';
    categoryChart('chart-copybw', rows, function (r) { return r.frac_copy_bw; }, function () { return 0.8; },
      'goal 0.8', why);
  }

  /* ---- history ---- */
  function historyPoints() {
    var m = state.metric, pts = [];
    D.rows.forEach(function (r) {
      if (!match(r) || !isNum(r[m])) return;
      var run = runOf(r);
      pts.push({date: String(run.env.date || ''), sha: String(run.env.git_sha || ''), machine: r.device, id: r.id,
        provider: r.provider, value: r[m], run: r.run});
    });
    D.history.forEach(function (h) {
      if (!isNum(h.values[m])) return;
      if (state.device && h.machine !== state.device) return;
      if (state.provider && h.provider !== state.provider) return;
      pts.push({date: h.date, sha: h.sha, machine: h.machine, id: h.id, provider: h.provider, value: h.values[m], run: null});
    });
    return pts;
  }
  function renderHistory() {
    var m = state.metric, better = METRICS[m][1], pts = historyPoints();
    $('history-metric').textContent = METRICS[m][0] + ' over every run' + (D.history.length ? ' and history.jsonl' : '') +
      '; changes beyond 5 % flagged (green: better, red: worse)';
    if (!pts.length) {
      $('history-table').innerHTML = '';
      return chart('chart-history', {}, null, 'no measured ' + METRICS[m][0] + ' for this selection');
    }
    var cols = uniq(pts.map(function (p) { return p.date + '|' + p.sha; })).sort();
    var keys = uniq(pts.map(function (p) { return p.machine + '|' + p.id + '|' + p.provider; }));
    var html = '<table id="history-grid"><tr><th class="l">machine</th><th class="l">case</th><th class="l">provider</th>' +
      cols.map(function (c) { var s = c.split('|'); return '<th>' + esc(s[0].slice(0, 16).replace('T', ' ')) + '<br>' +
        esc(s[1].slice(0, 8)) + '</th>'; }).join('') + '</tr>';
    var flagged = 0, seriesVals = {}, shown = 0, body = '';
    var at = index(pts, function (x) { return x.machine + '|' + x.id + '|' + x.provider + '#' + x.date + '|' + x.sha; });
    keys.forEach(function (k) {
      var parts = k.split('|'), prev = null, line = '', flags = 0;
      line += '<tr data-key="' + esc(k) + '"><td class="l">' + esc(parts[0]) + '</td><td class="l">' + esc(parts[1]) +
        '</td><td class="l">' + esc(parts[2]) + '</td>';
      seriesVals[k] = cols.map(function (c) {
        var p = at.get(k + '#' + c);
        if (!p) { line += '<td></td>'; return null; }
        var cls = '', title = '';
        if (prev !== null && prev !== 0) {
          var ch = p.value / prev - 1;
          title = (ch >= 0 ? '+' : '') + (100 * ch).toFixed(1) + ' % vs previous';
          if (Math.abs(ch) > 0.05) { cls = (ch > 0) === (better > 0) ? 'up' : 'down'; flagged++; flags++; }
        }
        prev = p.value;
        line += '<td class="' + cls + '" title="' + esc(title) + '">' + esc(fmt(m, p.value)) + (cls ? ' ' + (cls === 'up' ? '\u25b2' : '\u25bc') : '') + '</td>';
        return p.value;
      });
      if (shown < MAX_TABLE_ROWS) { body += line + '</tr>'; shown++; }
    });
    $('history-table').innerHTML = '<p class="sub">' + keys.length + ' series, ' + cols.length + ' points in time, ' + flagged +
      ' change(s) beyond 5 %' + (shown < keys.length ? '; the first ' + shown + ' series shown (narrow with the filters)' : '') +
      '</p>' + html + body + '</table>';
    var xs = cols.map(function (c) { var t = Date.parse(c.split('|')[0]); return isNum(t) ? t / 1000 : null; });
    var counts = {};
    keys.forEach(function (k) { counts[k] = seriesVals[k].filter(isNum).length; });
    var ordered = keys.slice().sort(function (a, b) { return counts[b] - counts[a]; }).slice(0, 12);
    if (xs.some(function (x) { return x === null; })) xs = cols.map(function (_, i) { return i; });
    var data = [xs], series = [{}];
    ordered.forEach(function (k) {
      var p = k.split('|')[2];
      data.push(seriesVals[k]);
      series.push({label: k.split('|').slice(1).join(' \u00b7 '), stroke: color(p), width: 1.5, spanGaps: true,
        points: {show: true, size: 6, fill: color(p)}});
    });
    var time = xs.length && xs[0] > 1e8;
    var positive = pts.every(function (p) { return p.value > 0; });  // log scale: outliers beside small values
    chart('chart-history', {scales: {x: {time: time}, y: {distr: positive ? 3 : 1}}, series: series, legend: {live: false},
      axes: [{}, {label: METRICS[m][0], labelSize: 20}]}, data);
  }

  /* ---- base -> new ---- */
  function renderCompare() {
    var m = state.metric, better = METRICS[m][1], b = +state.base, n = +state.new;
    $('compare-title').textContent = D.runs[b].label + ' \u2192 ' + D.runs[n].label + ', ' + METRICS[m][0];
    if (b === n) { $('compare-table').innerHTML = '<p class="empty">pick two different runs (base and run) to compare</p>'; return; }
    var base = runRows(b), neu = runRows(n);
    var keys = uniq(base.concat(neu).map(function (r) { return r.id + '|' + r.provider; }));
    var ib = index(base), inew = index(neu);
    var html = '<table id="compare-grid"><tr><th class="l">case</th><th class="l">provider</th><th>base</th><th>new</th><th>delta</th></tr>';
    var flagged = 0, shown = 0;
    keys.forEach(function (k) {
      var rb = ib.get(k), rn = inew.get(k), cb = cell(rb, m), cn = cell(rn, m), d = '', cls = '', dv = '';
      if (isNum(cb.value) && isNum(cn.value) && cb.value !== 0) {
        var ch = cn.value / cb.value - 1;
        dv = ch;
        d = (ch >= 0 ? '+' : '') + (100 * ch).toFixed(1) + ' %';
        if (Math.abs(ch) > 0.05) { cls = (ch > 0) === (better > 0) ? 'up' : 'down'; flagged++; }
      } else if (!rb || !rn) { d = rb ? 'only in base' : 'only in new'; }
      var parts = k.split('|');
      if (shown++ >= MAX_TABLE_ROWS) return;
      html += '<tr data-key="' + esc(k) + '"><td class="l">' + esc(parts[0]) + '</td><td class="l">' + esc(parts[1]) + '</td>' +
        td(cb) + td(cn) + '<td class="delta ' + cls + '" data-delta="' + dv + '">' + esc(d) + '</td></tr>';
    });
    $('compare-table').innerHTML = '<p class="sub">' + keys.length + ' case(s), ' + flagged + ' changed beyond 5 %' +
      (keys.length > MAX_TABLE_ROWS ? '; the first ' + MAX_TABLE_ROWS + ' shown (narrow with the filters)' : '') + '</p>' +
      html + '</table>';
  }

  /* ---- drill-down and rows ---- */
  var MAX_TABLE_ROWS = 600;  // longer tables: narrow with the filters (keeps the page fast)
  var SKIP = {run: 1, device: 1, error: 1, legacy_status: 1, note: 1, status: 1, timing: 1};
  var CASE = {batch: 1, channels: 1, height: 1, width: 1, x_bytes: 1, reduction_ratio: 1};
  function renderDrill() {
    var key = state.case, n = +state.new;
    var r = key ? D.rows.filter(function (x) { return x.run === n && x.id + '|' + x.provider === key; })[0] : null;
    if (!r) {
      $('drill-title').textContent = '';
      $('drill-body').innerHTML = '<p class="empty">' + (key ? 'case ' + esc(key) + ' is not in this run' :
        'pick a case (the case filter, or click a row below)') + '</p>';
      return;
    }
    var run = runOf(r);
    $('drill-title').textContent = r.id + ' \u00b7 ' + r.provider + ' (' + run.label + ')';
    var metrics = '<table id="drill-metrics"><tr><th class="l">metric</th><th>value</th></tr>';
    var seen = {};
    // the timings every row has (shown as verified / not measured / failed when absent), then the row's numbers
    ['median_ms', 'p20_ms', 'p80_ms', 'speedup_vs_eager', 'speedup_vs_compile'].concat(Object.keys(r)).forEach(function (k) {
      if (seen[k] || SKIP[k] || CASE[k] || typeof r[k] === 'string') return;
      seen[k] = 1;
      metrics += '<tr><td class="l">' + esc(k) + '</td>' + td(cell(r, k), ' data-key="' + esc(k) + '"') + '</tr>';
    });
    var caseT = '<table><tr><th class="l">field</th><th class="l">value</th></tr>';
    Object.keys(r).forEach(function (k) {
      if (typeof r[k] === 'string' && !SKIP[k]) caseT += '<tr><td class="l">' + esc(k) + '</td><td class="l">' + esc(r[k]) + '</td></tr>';
    });
    ['batch', 'channels', 'height', 'width', 'reduction_ratio', 'x_bytes'].forEach(function (k) {
      if (k in r) caseT += '<tr><td class="l">' + k + '</td><td class="l">' + esc(k === 'x_bytes' ? fmtBytes(r[k]) : r[k]) + '</td></tr>';
    });
    var env = '<table><tr><th class="l">environment</th><th class="l">value</th></tr>';
    Object.keys(run.env).forEach(function (k) {
      env += '<tr><td class="l">' + esc(k) + '</td><td class="l">' + esc(run.env[k]) + '</td></tr>';
    });
    env += '<tr><td class="l">timer</td><td class="l">' + esc(run.timer) + '</td></tr><tr><td class="l">source</td><td class="l">' +
      esc(run.source) + '</td></tr></table>';
    var status = '<p>status <b id="drill-status">' + esc(r.status) + '</b>, timing <span class="t-' + r.timing +
      '" id="drill-timing">' + esc(TIMING_LABEL[r.timing]) + '</span>' + (r.legacy_status && r.legacy_status !== r.status ?
      ' (recorded as "' + esc(r.legacy_status) + '")' : '') + '</p>' +
      (r.error ? '<div class="err" id="drill-error">' + esc(r.error) + '</div>' : '');
    $('drill-body').innerHTML = status + '<div class="kv"><div>' + metrics + '</table></div><div>' + caseT + '</table></div><div>' +
      env + '</div></div>';
  }
  function renderRows() {
    var rows = runRows(+state.new), m = state.metric;
    $('rows-count').textContent = rows.length + ' of ' + D.rows.filter(function (r) { return r.run === +state.new; }).length +
      ' rows of ' + D.runs[+state.new].label + (rows.length > MAX_TABLE_ROWS ? '; the first ' + MAX_TABLE_ROWS +
      ' shown (narrow with the filters)' : '');
    var cols = ['median_ms', 'p20_ms', 'p80_ms', 'speedup_vs_eager', 'speedup_vs_compile', 'traffic_x', 'dram_model_x',
      'compile_s', 'launches'];
    if (cols.indexOf(m) < 0) cols.unshift(m);
    var html = '<table id="rows-grid"><tr><th class="l">case</th><th class="l">kind</th><th class="l">provider</th><th class="l">status</th>' +
      '<th class="l">timing</th>' + cols.map(function (c) { return '<th>' + esc(METRICS[c] ? METRICS[c][0] : c) + '</th>'; }).join('') +
      '<th class="l">note / error</th></tr>';
    rows.slice(0, MAX_TABLE_ROWS).forEach(function (r) {
      var k = r.id + '|' + r.provider;
      html += '<tr data-key="' + esc(k) + '" data-timing="' + r.timing + '" data-status="' + r.status + '" class="t-' + r.timing +
        (failed(r) ? ' s-fail' : '') + (state.case === k ? ' sel' : '') + '"><td class="l">' + esc(r.id) + '</td><td class="l">' +
        esc(r.kind) + '</td><td class="l">' + esc(r.provider) + '</td><td class="l">' + esc(r.status) + '</td><td class="l">' +
        esc(TIMING_LABEL[r.timing]) + '</td>' + cols.map(function (c) { return td(cell(r, c)); }).join('') +
        '<td class="l">' + esc((r.error || '').slice(0, 90)) + '</td></tr>';
    });
    $('rows-table').innerHTML = html + '</table>';
  }
  function renderSources() {
    $('sources-summary').textContent = D.runs.length + ' run(s), ' + D.rows.length + ' rows' +
      (D.history.length ? ', ' + D.history.length + ' history record(s)' : '') + ' \u2014 sources';
    $('source-list').innerHTML = D.runs.map(function (r) {
      return '<li>' + esc(r.label) + ': torch ' + esc(r.env.torch) + ', triton ' + esc(r.env.triton) + ', git ' +
        esc(r.env.git_sha) + (r.has_study ? ', study.json' : '') + '</li>';
    }).join('');
  }

  var timings = window.dashboardTimings = {};
  function timed(name, fn) { var t = performance.now(); fn(); timings[name] = Math.round(performance.now() - t); }
  function update() {
    timed('filters', setupFilters);
    writeUrl();
    $('permalink').href = '#' + query();
    $('charts-run').textContent = D.runs[+state.new].label;
    [['targets', renderTargets], ['tiles', renderTiles], ['networks', renderNetworks], ['heatmap', renderHeatmap],
      ['latency', renderLatency], ['copybw', renderCopyBw], ['traffic', renderTraffic], ['history', renderHistory],
      ['compare', renderCompare], ['drill', renderDrill], ['rows', renderRows]].forEach(function (p) { timed(p[0], p[1]); });
  }

  readUrl();
  renderSources();
  KEYS.forEach(function (k) { $('f-' + k).addEventListener('change', onFilter); });
  $('rows-table').addEventListener('click', function (e) {
    var tr = e.target.closest('tr[data-key]');
    if (!tr) return;
    state.case = tr.getAttribute('data-key');
    update();
    $('drill').scrollIntoView();
  });
  window.addEventListener('hashchange', function () { readUrl(); update(); });
  update();
  window.dashboardRenderedMs = performance.now();
  document.body.setAttribute('data-ready', '1');
}());
