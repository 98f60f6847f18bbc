"""cbam-triton benchmark: ``python -m bench`` (or ``cbam-bench``).

    python -m bench                          # GPU: full suite; CPU-only: the quick suite
    python -m bench --quick                  # a few small cases (< 3 min on a 2-core CPU)
    python -m bench --suite resnet50 --batch 32 --dtypes fp16 --layouts channels_last
    python -m bench --modes train --suite resnet50   # forward + backward (training) only
    python -m bench --models resnet50-cbam --batch 32 --dtypes fp16 --providers eager compile triton triton+compile
    python -m bench --quick --models resnet18-cbam   # CPU: block rows and a whole network's rows
    python -m bench dashboard run1.json run2/ -o dashboard.html   # default: every run under bench/results/
    python -m bench targets bench/results/<run>/results.json   # the speed targets, met or not

Every provider's output is checked against eager before it is timed; a mismatch is reported, not
timed. On a CPU-only machine eager and torch.compile are timed on the CPU and the Triton provider is
verified through Triton's interpreter on small cases (never timed: interpreter timings mean nothing).
Writes results.json (schema-versioned), results.csv, results.md, latency.png, speedup.png,
bandwidth.png and dashboard.html into --out.

--models runs whole networks with CBAM blocks (bench/models.py: resnet50-cbam, resnet18-cbam,
yolo-neck-cbam, or all), forward in eval mode, with the providers eager, compile, triton,
triton+compile (and triton-cudagraph, compile-cudagraphs on GPU), and reports the share of the
network's traffic and latency that belongs to the CBAM blocks. --models alone runs no block cases;
with --quick, --suite or --shapes it runs both.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _progress(total: int):  # noqa: ANN202
    start = time.time()
    state = {"i": 0}

    def step(msg: str) -> None:
        state["i"] += 1
        i = state["i"]
        width = 24
        filled = int(width * (i - 1) / max(1, total))
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {i}/{total} {time.time() - start:6.0f}s  {msg:<60}",
              end="" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)

    return step


def _run(args: argparse.Namespace) -> int:
    import torch

    from bench import measure, models, report, runner, targets
    from bench.suite import SHAPES, SUITES, make_cases

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    blocks = not args.models or bool(args.quick or args.suite or args.shapes)
    quick = args.quick or (not cuda and not args.suite and not args.shapes)
    if quick and not args.quick and blocks:
        print("bench: no CUDA device: running the quick suite on the CPU (eager and torch.compile timed, "
              "Triton verified in the interpreter). GPU timings need a CUDA device.", file=sys.stderr)
    shapes = args.shapes or SUITES["quick" if quick else (args.suite or "full")]
    batches = args.batch or ([1, 2] if quick else [1, 8, 32])
    dtypes = args.dtypes or (["fp32"] if quick else ["fp16", "bf16", "fp32"])
    layouts = args.layouts or ["nchw", "channels_last"]
    modes = args.modes or ["forward", "train"]
    providers = tuple(args.providers or (runner.PROVIDERS_GPU if cuda else runner.PROVIDERS_CPU))
    model_providers = tuple(args.providers or (models.PROVIDERS_GPU if cuda else models.PROVIDERS_CPU))
    known = list(dict.fromkeys(runner.PROVIDERS_GPU + models.PROVIDERS_GPU))
    bad = [p for p in providers if p not in known]
    if bad:
        print(f"bench: unknown providers {bad}; known: {', '.join(known)} (triton+compile: --models only)",
              file=sys.stderr)
        return 2
    providers = tuple(p for p in providers if p in runner.PROVIDERS_GPU)  # the block providers
    model_providers = tuple(p for p in model_providers if p in models.PROVIDERS_GPU)
    if not cuda:
        providers = tuple(p for p in providers if p not in ("triton-cudagraph", "compile-cudagraphs"))
        model_providers = tuple(p for p in model_providers if p not in ("triton-cudagraph", "compile-cudagraphs"))
    try:
        cases = make_cases(shapes, batches, dtypes, layouts, modes) if blocks else []
        model_cases = models.make_model_cases(
            args.models, args.batch, args.dtypes or (["fp16"] if cuda and not quick else ["fp32"]),
            args.layouts or ["channels_last"], args.image_size, quick=quick) if args.models else []
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if cases and not providers:  # e.g. --providers triton+compile: a network-only provider
        if not model_cases:
            print(f"bench: none of the providers {list(args.providers or ())} runs on a block; block providers: "
                  f"{', '.join(runner.PROVIDERS_GPU)}", file=sys.stderr)
            return 2
        cases = []
    if args.models and not model_providers:
        print(f"bench: none of the providers {list(args.providers or ())} runs on a network; model providers: "
              f"{', '.join(models.PROVIDERS_GPU)}", file=sys.stderr)
        return 2
    if quick and not args.batch:  # quick: keep it to a few cases (train: the two tiny ones)
        cases = [c for c in cases if (c.shape_name, c.batch) in (("tiny", 2), ("tiny-wide", 1))
                 and (c.mode == "forward" or c.shape_name == "tiny")]
    os.makedirs(args.out, exist_ok=True)
    env = measure.environment(device)
    what = [f"{len(cases)} cases x {len(providers)} providers"] if cases else []
    what += [f"{len(model_cases)} networks x {len(model_providers)} providers"] if model_cases else []
    print(f"bench: {', '.join(what)}"
          + f" on {env['device_name']} (torch {env['torch']}, triton {env['triton']}); output in {args.out}",
          file=sys.stderr)
    step = _progress(len(cases) * len(providers) + len(model_cases) * len(model_providers))
    rows = []
    for case in cases:
        copy_gbps = measure.copy_bandwidth_gbps(case.x_bytes(), device) if cuda else None
        rows += runner.run_case(case, providers, device, log=step, copy_gbps=copy_gbps)
    for mcase in model_cases:
        rows += models.run_model_case(mcase, model_providers, device, shares=not args.no_shares, log=step)
    print(file=sys.stderr)
    if args.ncu:
        _ncu_rows(rows, cases, cuda)
    config = {"shapes": {s: SHAPES[s] for s in shapes}, "batches": batches, "dtypes": dtypes, "layouts": layouts,
              "modes": modes, "floor_x": runner.FLOOR_X,
              "providers": list(providers), "quick": quick, "check_tolerance": runner.CHECK_TOL,
              "models": {c.model: {"description": models.MODELS[c.model].description, "image_size": c.image_size}
                         for c in model_cases},
              "model_providers": list(model_providers) if model_cases else [],
              "model_shares": ("marginal: T(network) - T(network with every CBAM -> nn.Identity), same provider "
                               "family (bench/models.py)") if model_cases and not args.no_shares else None,
              "timer": "triton.testing.do_bench (median, p20, p80; L2 flushed)" if cuda else
              "wall clock, synchronous CPU execution (median, p20, p80)"}
    doc = report.make_document(env, config, rows)
    if cases:  # the block targets judge block rows only
        doc["targets"] = targets.evaluate(doc)
    if model_cases:
        doc["model_goals"] = models.evaluate_goals(doc)
    problems = report.validate(doc)
    if problems:
        print("bench: internal error, invalid result document:", problems[:5], file=sys.stderr)
        return 1
    report.write_json(doc, os.path.join(args.out, "results.json"))
    report.write_csv(rows, os.path.join(args.out, "results.csv"))
    report.write_markdown(doc, os.path.join(args.out, "results.md"))
    if not args.no_plots:
        from bench.dashboard import write_dashboard
        from bench.plots import write_plots

        block_rows = [r for r in rows if r.get("kind") != "model"]
        write_plots(dict(doc, results=block_rows) if block_rows else doc, args.out)  # ms of blocks vs networks
        write_dashboard([doc], os.path.join(args.out, "dashboard.html"))
    print(report.format_terminal(rows))
    if cases:
        print("\nspeed targets (fp16 forward, ResNet-50 shapes; bench/targets.py):")
        print(targets.format_verdicts(doc["targets"]))
    if model_cases:
        print(f"\nnetwork goals of the first GPU run ({models.GOAL_MODEL}, {models.GOAL_DTYPE}, batch "
              f"{models.GOAL_BATCH}; recorded, bench/models.py):")
        print(targets.format_verdicts(doc["model_goals"]))
    if not cuda:
        print("\nNo CUDA device: the timings above are CPU timings of eager and torch.compile; the Triton "
              "kernels were verified in the interpreter, not timed. GPU timings need a CUDA device.")
    flagged = [r for r in rows if r["status"] in ("mismatch", "error")]
    if flagged:
        print(f"\nbench: {len(flagged)} provider result(s) flagged (mismatch/error): see the notes above.")
    print(f"\nbench: wrote {args.out}/results.json, results.csv, results.md"
          + ("" if args.no_plots else ", latency.png, speedup.png, bandwidth.png, dashboard.html"))
    return 1 if (flagged and args.strict) else 0


#: providers measured with --ncu (the compile providers would recompile in every child process)
NCU_PROVIDERS = ("eager", "compile", "triton", "triton-l2", "triton-stream")


def _ncu_rows(rows: list[dict], cases: list, cuda: bool) -> None:
    from bench import ncu

    if not cuda or ncu.ncu_path() is None:
        print("bench: --ncu needs a CUDA device and Nsight Compute (ncu); skipped", file=sys.stderr)
        return
    by_id = {c.id: c for c in cases}
    todo = [r for r in rows if r["status"] == "ok" and r["mode"] == "forward" and r["provider"] in NCU_PROVIDERS
            and r.get("kind") != "model"]  # networks: not measured with ncu
    for i, r in enumerate(todo, 1):
        print(f"bench: ncu {i}/{len(todo)} {r['id']} {r['provider']}", file=sys.stderr, flush=True)
        try:
            got = ncu.measure(by_id[r["id"]], r["provider"])
        except Exception as exc:  # reported in the row, the run goes on
            r["note"] = (r.get("note", "") + f" ncu: {type(exc).__name__}: {exc}")[:500]
            continue
        r["ncu_dram_bytes"] = got["read"] + got["write"]
        r["ncu_dram_x"] = r["ncu_dram_bytes"] / r["x_bytes"]


def _dashboard(args: argparse.Namespace) -> int:
    from bench.dashboard import write_dashboard_from_paths

    try:
        inputs = write_dashboard_from_paths(args.files, args.output)
    except (OSError, ValueError) as exc:
        print(f"bench dashboard: {exc}", file=sys.stderr)
        return 2
    print(f"bench dashboard: wrote {args.output} ({len(inputs.runs)} run(s), {len(inputs.history)} history record(s))")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dashboard"]:
        p = argparse.ArgumentParser(prog="python -m bench dashboard", description="the dashboard of result files")
        p.add_argument("files", nargs="*", help="results.json files or folders (default: bench/results/)")
        p.add_argument("-o", "--output", default="dashboard.html")
        return _dashboard(p.parse_args(argv[1:]))
    if argv[:1] == ["targets"]:
        from bench.targets import main as targets_main

        p = argparse.ArgumentParser(prog="python -m bench targets",
                                    description="check result files against the speed targets")
        p.add_argument("files", nargs="+", help="results.json files")
        return targets_main(p.parse_args(argv[1:]).files)
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="a few small cases (CPU-friendly)")
    p.add_argument("--suite", choices=["full", "resnet50", "yolo", "seed", "quick"])
    p.add_argument("--shapes", nargs="+", help="named shapes (see bench/suite.py)")
    p.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1 8 32)")
    p.add_argument("--dtypes", nargs="+", help="fp16 bf16 fp32 (default all)")
    p.add_argument("--layouts", nargs="+", help="nchw channels_last (default both)")
    p.add_argument("--modes", nargs="+", help="forward (inference) and/or train (forward + backward); default both")
    p.add_argument("--providers", nargs="+", help="eager compile compile-max-autotune triton triton-l2 "
                   "triton-stream triton-cudagraph compile-cudagraphs; networks: eager compile triton "
                   "triton+compile triton-cudagraph compile-cudagraphs")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="whole networks: resnet50-cbam resnet18-cbam yolo-neck-cbam, or all (bench/models.py); "
                        "alone: no block cases")
    p.add_argument("--image-size", type=int, help="networks' input H = W (default: each network's; multiple of 32)")
    p.add_argument("--no-shares", action="store_true",
                   help="networks: skip the CBAM-free baselines (one more compile) behind the CBAM traffic/latency "
                        "shares")
    p.add_argument("--out", default=os.path.join("bench", "out"), help="output folder (default bench/out)")
    p.add_argument("--cpu", action="store_true", help="benchmark on the CPU even if CUDA is available")
    p.add_argument("--no-plots", action="store_true", help="skip PNG plots and the HTML dashboard")
    p.add_argument("--ncu", action="store_true",
                   help="GPU: measure each forward row's DRAM bytes with Nsight Compute (bench/ncu.py; slow)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any provider mismatches or errors")
    args = p.parse_args(argv)
    # cold compiles, honest metrics; read when `import torch` imports torch.compiler.config, so set first
    # (bench/models.py also forces it around each network compile: a cached graph replays inductor's byte
    # total but not its per-kernel list)
    os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
    import torch

    if (args.cpu or not torch.cuda.is_available()) and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton provider is verified in the interpreter
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
