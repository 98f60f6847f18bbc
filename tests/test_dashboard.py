"""The benchmark dashboard (bench/dashboard/): its data (statuses, summaries, history) in Python, then the
page as a person uses it, in a real headless browser (Debian's chromium driven by Selenium through the
system chromedriver; `.ci/run` installs both). One browser session serves every browser test. Without a
browser the browser tests skip and say why, except in CI (CI=true), where they fail."""

from __future__ import annotations

import glob
import io
import json
import math
import os
import shutil
import statistics
import time

import pytest

from bench import report
from bench.__main__ import main as bench_main
from bench.dashboard import build_dashboard, page_data, write_dashboard_from_paths
from bench.dashboard.load import RESULTS_DIR, load_inputs
from bench.dashboard.rows import normalize_rows
from bench.dashboard.summary import provider_summary
from bench.suite import make_cases

MAX_BYTES = 5 * 2**20
RENDER_BUDGET_MS = 2000


# ---------------------------------------------------------------- synthetic runs


def _row(case, provider, median=None, status=None, **kw):
    row = dict(case.as_dict(), provider=provider, x_bytes=case.x_bytes(), note="",
               status=status or ("ok" if median is not None else "verified"))
    if median is not None:
        row.update(median_ms=median, p20_ms=0.9 * median, p80_ms=1.1 * median)
    row.update(kw)
    return row


def _doc(date, sha, rows, device="NVIDIA H200", device_type="cuda"):
    env = {**{k: "x" for k in report.REQUIRED_ENV}, "date": date, "git_sha": sha, "device_name": device,
           "device_type": device_type, "torch": "2.14.1", "triton": "3.8.0"}
    for r in rows:  # speedup over eager, as the runner writes it
        eager = next((e for e in rows if e["id"] == r["id"] and e["provider"] == "eager"), None)
        if r.get("median_ms") and eager:
            r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"]
    return report.make_document(env, {"floor_x": {"forward": 2, "train": 5}}, rows)


CHANGED = "tiny-b2-fp32-channels_last"  # triton: 0.2 ms in the base run, 0.3 ms in the new one (+50 %)
SAME = "tiny-b2-fp32-nchw"


def _pair():
    """Two GPU runs of the same cases; in the new one triton is slower on CHANGED, compile fails the
    accuracy check on SAME and triton-l2 fails to run (newer status fields)."""
    nchw, cl = make_cases(["tiny"], [2], ["fp32"], ["nchw", "channels_last"])
    base = [_row(nchw, "eager", 1.0, peak_mem_bytes=4e6), _row(nchw, "triton", 0.2, frac_copy_bw=0.85,
                                                                  dram_model_x=2.1, peak_mem_bytes=2e6),
            _row(nchw, "compile", 0.5, compile_s=12.0),
            _row(cl, "eager", 1.0), _row(cl, "triton", 0.2, frac_copy_bw=0.83, dram_model_x=2.2),
            _row(cl, "compile", 0.5, compile_s=10.0)]
    new = [_row(nchw, "eager", 1.0, peak_mem_bytes=4e6), _row(nchw, "triton", 0.2, frac_copy_bw=0.85,
                                                                 dram_model_x=2.1, peak_mem_bytes=2e6),
           _row(nchw, "compile", status="mismatch", note="max abs err 3.1e-02 > tolerance"),
           _row(cl, "eager", 1.0), _row(cl, "triton", 0.3, frac_copy_bw=0.56, dram_model_x=2.2),
           _row(cl, "compile", 0.5, compile_s=11.0),
           _row(cl, "triton-l2", status="fail_to_run", timing="not_measured", error="RuntimeError: out of resources")]
    r50 = make_cases(["resnet50-s1"], [32], ["fp16"], ["channels_last"])[0]  # a speed target's case: 2.5x, missed
    new += [_row(r50, "eager", 3.0), _row(r50, "triton", 1.2, frac_copy_bw=0.9)]
    return _doc("2026-11-01T10:00:00+00:00", "aaaa1111", base), _doc("2026-11-20T10:00:00+00:00", "bbbb2222", new)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """all.html: every committed run (the CLI's default); pair.html: the two synthetic runs as folders, the new
    one with a study.json, plus a history.jsonl."""
    out = tmp_path_factory.mktemp("dashboard")
    assert bench_main(["dashboard", "-o", str(out / "all.html")]) == 0
    base, new = _pair()
    for name, doc in (("base", base), ("new", new)):
        (out / "runs" / name).mkdir(parents=True)
        (out / "runs" / name / "results.json").write_text(json.dumps(doc))
    study = {"providers": {"triton": {"pass_rate": 0.75, "geomean_speedup": {"eager": 4.25, "compile": 1.6},
                                      "fast_p": {"0": 0.75, "1": 0.75, "1.5": 0.5, "2.0": 0.25},
                                      "compile_s_cold": 0.0, "compile_s_warm": None, "memory_ratio": 1.9}}}
    (out / "runs" / "new" / "study.json").write_text(json.dumps(study))
    (out / "runs" / "history.jsonl").write_text(json.dumps(
        {"sha": "cccc3333", "date": "2026-11-25T10:00:00+00:00", "machine": "NVIDIA H200", "id": CHANGED,
         "provider": "triton", "median_ms": 0.21}) + "\n")
    write_dashboard_from_paths([str(out / "runs")], str(out / "pair.html"))
    (out / "big.html").write_text(build_dashboard([_full_gpu_run(day) for day in range(1, 6)]))
    return out


def _full_gpu_run(day):
    """A run of the full GPU suite's size (every shape, batch, dtype, layout and mode; every provider) with
    made-up numbers: what five such runs weigh in the page."""
    import random

    from bench.runner import PROVIDERS_GPU, TRAIN_PROVIDERS
    from bench.suite import SUITES

    rnd = random.Random(day)
    rows = []
    for case in make_cases(SUITES["full"], [1, 8, 32], ["fp16", "bf16", "fp32"], ["nchw", "channels_last"],
                           ["forward", "train"]):
        for provider in PROVIDERS_GPU if case.mode == "forward" else TRAIN_PROVIDERS:
            ms = rnd.uniform(0.01, 5.0)
            rows.append(_row(case, provider, ms, traffic_x=rnd.uniform(2, 9), dram_model_x=rnd.uniform(2, 9),
                             launches=rnd.randint(1, 60), floor_gbps=rnd.uniform(100, 3000),
                             frac_copy_bw=rnd.uniform(0.1, 0.95), peak_mem_bytes=rnd.randint(1, 1 << 30),
                             compile_s=rnd.uniform(1, 60) if provider.startswith("compile") else None,
                             max_abs_err_vs_eager=rnd.uniform(0, 1e-3)))
    return _doc(f"2026-11-{day:02d}T10:00:00+00:00", f"{day:08x}", rows)


# ---------------------------------------------------------------- data (no browser)


def test_rows_get_status_and_timing_old_and_new():
    base, new = _pair()
    rows = {(r["id"], r["provider"]): r for r in normalize_rows(new["results"], 0, "gpu")}
    assert (rows[SAME, "eager"]["status"], rows[SAME, "eager"]["timing"]) == ("pass", "timed")
    assert (rows[SAME, "compile"]["status"], rows[SAME, "compile"]["timing"]) == ("fail_accuracy", "not_measured")
    assert rows[SAME, "compile"]["error"] == "max abs err 3.1e-02 > tolerance"
    assert (rows[CHANGED, "triton-l2"]["status"], rows[CHANGED, "triton-l2"]["error"]) == (
        "fail_to_run", "RuntimeError: out of resources")
    # speedup over torch.compile derived where the runner wrote none (compile 0.5 ms / triton 0.3 ms)
    assert rows[CHANGED, "triton"]["speedup_vs_compile"] == pytest.approx(0.5 / 0.3)
    cpu = normalize_rows([dict(_row(make_cases(["tiny"], [1], ["fp32"], ["nchw"])[0], "triton"))], 0, "cpu")[0]
    assert (cpu["status"], cpu["timing"]) == ("pass", "verified") and "median_ms" not in cpu


def test_provider_summary_derived_from_rows():
    _, new = _pair()
    rows = normalize_rows(new["results"], 0, "gpu")
    triton = provider_summary(rows, "triton")
    assert triton["pass_rate"] == 1.0 and triton["timed"] == 3
    assert triton["geomean_speedup"] == pytest.approx(((1.0 / 0.2) * (1.0 / 0.3) * 2.5) ** (1 / 3))
    assert triton["fast_p"] == {"0": 1.0, "1": 1.0, "1.5": 1.0, "2": 1.0}
    assert triton["memory_ratio"] == pytest.approx(2.0) and triton["memory_basis"] == "peak_mem_bytes"
    compile_ = provider_summary(rows, "compile")  # one pass at 2x eager, one accuracy failure
    assert compile_["pass_rate"] == 0.5 and compile_["fast_p"] == {"0": 0.5, "1": 0.5, "1.5": 0.5, "2": 0.0}
    assert compile_["compile_s_cold"] == 11.0
    assert provider_summary(rows, "triton-l2")["pass_rate"] == 0.0
    assert provider_summary(rows, "triton-l2")["geomean_speedup"] is None  # not measured, not zero


def test_study_and_history_files_are_read(pages):
    data = page_data(load_inputs([str(pages / "runs")]))
    assert [r["env"]["git_sha"] for r in data["runs"]] == ["aaaa1111", "bbbb2222"]
    s = data["runs"][1]["summary"]["all"]["triton"]
    assert (s["source"], s["pass_rate"], s["geomean_speedup"], s["geomean_vs_compile"]) == ("study.json", 0.75, 4.25,
                                                                                            1.6)
    assert s["fast_p"]["2"] == 0.25
    assert data["history"] == [{"date": "2026-11-25T10:00:00+00:00", "sha": "cccc3333", "machine": "NVIDIA H200",
                                "id": CHANGED, "provider": "triton", "values": {"median_ms": 0.21},
                                "source": "history.jsonl"}]


def test_cli_page_of_committed_runs_is_offline_and_small(pages, tmp_path):
    html = (pages / "all.html").read_text()
    assert len(html.encode()) <= MAX_BYTES
    body = html.split("<script", 1)[1]
    assert "http" not in body and " src=" not in html  # nothing fetched at view time
    assert "Copyright (c) 2022 Leon Sorokin" in html  # the vendored library's license
    data = json.loads(html.split('<script id="data" type="application/json">', 1)[1].split("</script>", 1)[0])
    assert len(data["runs"]) == len(_committed_run_files())
    assert bench_main(["dashboard", str(tmp_path / "missing"), "-o", str(tmp_path / "x.html")]) == 2
    with pytest.raises(ValueError, match="not a valid result document"):
        build_dashboard([{"schema_version": 1}])


# ---------------------------------------------------------------- the page in a browser


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def browser():
    # skipped where no browser is installed, but never in CI (CI=true), where `.ci/run` installs one
    missing = pytest.fail if os.environ.get("CI") == "true" else pytest.skip
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium not installed (pip install selenium; the dev extra has it)")
    binary, driver = _chromium(), shutil.which("chromedriver")
    if binary is None or driver is None:
        missing("no headless browser here: needs Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver; `.ci/run` installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1800"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    yield drv
    drv.quit()


def _open(browser, path, hash_=""):
    """Load the page fresh (not a same-document hash change); returns the wall time of the load in ms."""
    browser.get("about:blank")
    browser.get_log("browser")
    t0 = time.perf_counter()
    browser.get(f"file://{path}{hash_}")
    for _ in range(100):
        if browser.execute_script("return document.body && document.body.getAttribute('data-ready')"):
            break
        time.sleep(0.05)
    return 1000 * (time.perf_counter() - t0)


def _errors(browser):
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    banner = browser.execute_script("var b=document.getElementById('script-error');return b.hidden?'':b.textContent")
    return logs + ([banner] if banner else [])


def _select(browser, key, value):
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "f-" + key)).select_by_value(value)


def _texts(browser, css):
    return browser.execute_script(f"return [...document.querySelectorAll({css!r})].map(e => e.textContent)")


def _committed_run_files():
    """Each committed run folder's document: its results.json, or a study folder's study.json."""
    files = []
    for folder in sorted(glob.glob(os.path.join(RESULTS_DIR, "*"))):
        for name in ("results.json", "study.json"):
            if os.path.isfile(os.path.join(folder, name)):
                files.append(os.path.join(folder, name))
                break
    return files


#: the committed run the page checks below are made against: blocks (forward and train), verified and timed
#: rows, networks; pinned by name, so that a newer run of another kind does not change what is checked
CHECKED_RUN = "2026-12-02-cpu-quick-models"


def _checked_run():
    """(the page's run index, document) of :data:`CHECKED_RUN` (the page orders runs by date)."""
    paths = sorted(_committed_run_files(), key=lambda p: json.load(open(p))["env"]["date"])
    index = next(i for i, p in enumerate(paths) if os.path.basename(os.path.dirname(p)) == CHECKED_RUN)
    return index, json.load(open(paths[index]))


def test_committed_runs_render_fast_without_errors(browser, pages):
    wall_ms = _open(browser, pages / "all.html")
    assert _errors(browser) == []
    rendered_ms = browser.execute_script("return window.dashboardRenderedMs")
    print(f"dashboard of every committed run: {(pages / 'all.html').stat().st_size / 1024:.0f} kB, "
          f"script done {rendered_ms:.0f} ms after navigation, load {wall_ms:.0f} ms")
    assert rendered_ms < RENDER_BUDGET_MS and wall_ms < RENDER_BUDGET_MS
    assert browser.find_element("id", "permalink").get_attribute("href").endswith("metric=median_ms")


def test_five_full_gpu_runs_stay_small_and_fast(browser, pages):
    size = (pages / "big.html").stat().st_size
    wall_ms = _open(browser, pages / "big.html")
    assert _errors(browser) == []
    rendered_ms = browser.execute_script("return window.dashboardRenderedMs")
    rows = browser.execute_script("return document.querySelectorAll('#rows-grid tr[data-key]').length")
    print(f"five full-suite GPU runs: {size / 2**20:.2f} MiB, {rows} rows in the table, script done "
          f"{rendered_ms:.0f} ms after navigation, load {wall_ms:.0f} ms")
    assert size <= MAX_BYTES and rows == 600  # longer tables are cut, and say so
    assert "narrow with the filters" in browser.find_element("id", "rows-count").text
    assert rendered_ms < RENDER_BUDGET_MS


def test_tiles_show_the_numbers_of_the_json(browser, pages):
    index, doc = _checked_run()
    _open(browser, pages / "all.html", f"#new={index}")
    for provider in {r["provider"] for r in doc["results"]}:
        mine = [r for r in doc["results"] if r["provider"] == provider and r["status"] != "skipped"]
        tile = f'.tile[data-provider="{provider}"] dd'
        pass_rate = sum(r["status"] in ("ok", "verified") for r in mine) / len(mine)
        assert _texts(browser, tile + '[data-key="pass_rate"]')[0].startswith(f"{100 * pass_rate:.1f} %"), provider
        timed = [r["speedup_vs_eager"] for r in mine if r["status"] == "ok"]
        geomean = _texts(browser, tile + '[data-key="geomean_speedup"]')[0]
        if timed:
            assert geomean == f"{math.exp(statistics.fmean(math.log(s) for s in timed)):.2f}\u00d7", provider
        else:
            assert geomean == "not measured", provider
        compile_s = [r["compile_s"] for r in mine if r.get("compile_s")]
        cold = _texts(browser, tile + '[data-key="compile_s_cold"]')[0]
        assert cold == (f"{statistics.median(compile_s):.2f} s" if compile_s else "not measured"), provider
    # CPU run: every speed target not measured, none shown as met or missed
    assert set(_texts(browser, "table.targets tr[data-status] .verdict")) == {"not measured"}


def test_filter_hides_rows_and_the_url_reproduces_the_view(browser, pages):
    index, doc = _checked_run()
    _open(browser, pages / "all.html", f"#new={index}")
    everything = len(_texts(browser, "#rows-grid tr[data-key]"))
    assert everything == len(doc["results"])
    _select(browser, "provider", "triton")
    _select(browser, "mode", "train")
    want = [r for r in doc["results"] if r["provider"] == "triton" and r["mode"] == "train"]
    keys = browser.execute_script("return [...document.querySelectorAll('#rows-grid tr[data-key]')]"
                                  ".map(e => e.dataset.key)")
    assert sorted(keys) == sorted(f"{r['id']}|triton" for r in want) and 0 < len(keys) < everything
    assert _texts(browser, ".tile h4") == ["triton"]
    url = browser.current_url
    assert "provider=triton" in url and "mode=train" in url
    _open(browser, url.split("#")[0].removeprefix("file://"), "#" + url.split("#", 1)[1])
    assert browser.find_element("id", "f-provider").get_attribute("value") == "triton"
    assert browser.find_element("id", "f-mode").get_attribute("value") == "train"
    assert sorted(browser.execute_script("return [...document.querySelectorAll('#rows-grid tr[data-key]')]"
                                         ".map(e => e.dataset.key)")) == sorted(keys)
    assert _errors(browser) == []


def test_verified_rows_look_different_and_never_zero(browser, pages):
    _open(browser, pages / "all.html", f"#new={_checked_run()[0]}")
    bg = browser.execute_script(
        "const r = t => document.querySelector(`#rows-grid tr[data-timing=${t}] td`);"
        "return [getComputedStyle(r('timed')).backgroundImage + getComputedStyle(r('timed')).backgroundColor,"
        "        getComputedStyle(r('verified')).backgroundImage + getComputedStyle(r('verified')).backgroundColor]")
    assert bg[0] != bg[1]
    medians = browser.execute_script("return [...document.querySelectorAll('#rows-grid tr[data-timing=verified]')]"
                                     ".map(tr => tr.children[5].textContent)")
    assert medians and set(medians) == {"verified"}
    assert "verified" in _texts(browser, "#heatmap td.hm.t-verified")


def _marks(browser, chart_id, provider):
    """Canvas pixels of ``chart_id`` drawn in ``provider``'s colour."""
    return browser.execute_script("""
        const c = document.querySelector('#' + arguments[0] + ' canvas'); if (!c) return 0;
        const hex = window.dashboardColor(arguments[1]);
        const rgb = [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < d.length; i += 4)
          if (d[i + 3] > 200 && Math.abs(d[i] - rgb[0]) + Math.abs(d[i + 1] - rgb[1])
              + Math.abs(d[i + 2] - rgb[2]) < 24) n++;
        return n;""", chart_id, provider)


def test_charts_draw_marks_for_the_data(browser, pages):
    _open(browser, pages / "all.html", f"#new={_checked_run()[0]}")
    assert _marks(browser, "chart-latency", "eager") > 50  # median line and points
    assert _marks(browser, "chart-traffic", "triton") > 20  # one dot per case
    assert _marks(browser, "chart-history", "compile-max-autotune") > 20
    assert "not yet measured on a GPU" in browser.find_element("id", "chart-copybw").text
    assert _marks(browser, "chart-latency", "triton") == 0  # verified in the interpreter: nothing to plot
    _open(browser, pages / "pair.html")  # GPU rows: the fraction of copy bandwidth
    assert _marks(browser, "chart-copybw", "triton") > 20
    assert _errors(browser) == []


def test_base_to_new_shows_the_delta_of_a_changed_case(browser, pages):
    _open(browser, pages / "pair.html", "#base=0&new=1&metric=median_ms")
    assert _errors(browser) == []
    cell = browser.find_element("css selector", f'#compare-grid tr[data-key="{CHANGED}|triton"] td.delta')
    assert cell.text == "+50.0 %" and "down" in cell.get_attribute("class")  # slower: flagged as worse
    same = browser.find_element("css selector", f'#compare-grid tr[data-key="{SAME}|triton"] td.delta')
    assert same.text == "+0.0 %" and "down" not in same.get_attribute("class")
    failed = browser.find_element("css selector", f'#compare-grid tr[data-key="{SAME}|compile"]')
    assert "fail accuracy" in failed.text  # the failure, not a zero or a delta
    # history: the change is flagged there too, and the history.jsonl point joins the runs
    row = browser.find_element("css selector", f'#history-grid tr[data-key="NVIDIA H200|{CHANGED}|triton"]')
    assert len(row.find_elements("css selector", "td.down")) == 1 and "0.2100" in row.text
    # the study's summaries fill the triton tile
    assert _texts(browser, '.tile[data-provider="triton"] dd[data-key="pass_rate"]') == ["75.0 %"]
    assert _texts(browser, '.tile[data-provider="triton"] dd[data-key="fast_p_2"]') == ["25.0 %"]


def test_headline_names_the_worst_case_of_a_missed_target(browser, pages):
    _open(browser, pages / "pair.html")
    rows = browser.find_elements("css selector", 'table.targets[data-device="NVIDIA H200"] tr[data-status]')
    by_target = {r.find_element("css selector", "td").text: r for r in rows}
    missed = by_target["forward >= 3x eager"]
    assert missed.get_attribute("data-status") == "missed"
    assert "2.50 x eager (goal 3) \u2014 resnet50-s1-b32-fp16-channels_last" in missed.text
    assert by_target[">= 80% of copy bandwidth counting 2|x|"].get_attribute("data-status") == "met"
    assert by_target["batch 1 with CUDA graphs >= 3x eager"].get_attribute("data-status") == "not measured"


def test_drill_down_shows_status_error_and_environment(browser, pages):
    _open(browser, pages / "pair.html", f"#new=1&case={CHANGED}|triton-l2")
    assert browser.find_element("id", "drill-status").text == "fail_to_run"
    assert browser.find_element("id", "drill-error").text == "RuntimeError: out of resources"
    assert "bbbb2222" in browser.find_element("id", "drill-body").text
    # clicking a row opens its drill-down and puts it in the URL
    browser.find_element("css selector", f'#rows-grid tr[data-key="{SAME}|compile"]').click()
    assert browser.find_element("id", "drill-status").text == "fail_accuracy"
    assert "case=" + SAME in browser.current_url
    assert browser.find_element("css selector", '#drill-metrics td[data-key="median_ms"]').text == "fail accuracy"
    assert _errors(browser) == []


def test_screenshot_is_not_blank(browser, pages):
    from PIL import Image

    _open(browser, pages / "all.html")
    img = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    background = max(colors)[0]
    assert len(colors) > 200 and background < 0.9 * img.width * img.height
