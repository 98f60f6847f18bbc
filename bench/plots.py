"""PNG plots of a result document: latency, speedup over eager, bandwidth vs. the copy roofline."""

from __future__ import annotations

import os
from typing import Any


def _grouped_bars(ax: Any, rows: list[dict[str, Any]], key: str, ylabel: str) -> bool:
    cases = list(dict.fromkeys(r["id"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    width = 0.8 / max(1, len(providers))
    drew = False
    for i, p in enumerate(providers):
        vals = []
        for c in cases:
            v = next((r.get(key) for r in rows if r["id"] == c and r["provider"] == p), None)
            vals.append(v if isinstance(v, (int, float)) else 0.0)
            drew = drew or isinstance(v, (int, float))
        ax.bar([j + i * width for j in range(len(cases))], vals, width, label=p)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels(cases, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return drew


def write_plots(doc: dict[str, Any], out_dir: str) -> list[str]:
    """Write latency.png, speedup.png and bandwidth.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["results"]
    env = doc["env"]
    title = f"{env['device_name']} — torch {env['torch']}, triton {env['triton']} — {env['date'][:10]}"
    paths = []
    specs = [("latency.png", "median_ms", "median latency (ms), lower is better"),
             ("speedup.png", "speedup_vs_eager", "speedup over eager, higher is better")]
    for fname, key, label in specs:
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len({r['id'] for r in rows}) + 4), 4.5))
        if not _grouped_bars(ax, rows, key, label):
            ax.text(0.5, 0.5, "no timed results", ha="center", va="center", transform=ax.transAxes)
        if key == "speedup_vs_eager":
            ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len({r['id'] for r in rows}) + 4), 4.5))
    has_bw = _grouped_bars(ax, rows, "floor_gbps", "GB/s counting the floor traffic (forward 2·|x|, train 5·|x|)")
    copy = [r["copy_gbps"] for r in rows if isinstance(r.get("copy_gbps"), (int, float))]
    if copy:
        ax.axhline(max(copy), color="red", ls="--", lw=1, label="device copy bandwidth")
        ax.legend(fontsize=7)
    if not has_bw:
        ax.text(0.5, 0.5, "bandwidth needs a CUDA device", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = os.path.join(out_dir, "bandwidth.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def write_study_plots(doc: dict[str, Any], out_dir: str) -> list[str]:
    """The study's plots: speedup over eager per provider × case (passing timed rows), and latency
    against the input's size with p20–p80 bands; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r.get("timing") == "timed"]
    env = doc["env"]
    title = f"{env['device_name']} — torch {env['torch']} — {env['date'][:10]} (passing, timed rows)"
    paths = []
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len({r['id'] for r in rows}) + 4), 4.5))
    if not _grouped_bars(ax, rows, "speedup_vs_eager", "speedup over eager (median), higher is better"):
        ax.text(0.5, 0.5, "no timed results", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "study_speedup.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in dict.fromkeys(r["provider"] for r in rows):
        rs = sorted((r for r in rows if r["provider"] == p), key=lambda r: r["x_bytes"])
        xs = [r["x_bytes"] / 2**20 for r in rs]
        ax.plot(xs, [r["median_ms"] for r in rs], marker="o", label=p)
        ax.fill_between(xs, [r["p20_ms"] for r in rs], [r["p80_ms"] for r in rs], alpha=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|x| (MiB)")
    ax.set_ylabel("latency (ms): median, p20–p80 band")
    if rows:
        ax.legend(fontsize=7)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "study_latency.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
