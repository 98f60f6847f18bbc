"""The wheel built from a clean export of the repository (its tracked files) installs ``cbam_triton``
only: no top-level ``bench``, ``reference`` or ``tests`` in site-packages, no console script needing
them; and the top-level ``reference`` of a clone names the objects the package carries."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("needs a git checkout (the clean export is its tracked files)")
    return [p for p in out.decode().split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]


def test_wheel_of_a_clean_export_holds_cbam_triton_only(tmp_path):
    export, dist = tmp_path / "export", tmp_path / "dist"
    for rel in _tracked_files():  # the working tree's tracked files: what a commit of it would hold
        os.makedirs(export / os.path.dirname(rel), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), export / rel)
    # the PEP 517 hook pip calls (setuptools is in the environment; no isolated build, no network)
    code = f"import setuptools.build_meta as b; print(b.build_wheel({str(dist)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=export, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheel = dist / proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode() if f"{dist_info}/entry_points.txt" in names \
            else ""
    assert {n.split("/")[0] for n in names} == {"cbam_triton", dist_info}
    assert "cbam_triton/reference.py" in names and "cbam_triton/kernels/gate.py" in names
    assert "bench" not in entry_points and "reference" not in entry_points


def test_top_level_reference_names_the_packaged_spec():
    import cbam_triton.reference
    import reference

    shared = [name for name in reference.__all__ if hasattr(cbam_triton.reference, name)]
    assert {"CBAM", "ChannelGate", "SpatialGate", "validate_config"} <= set(shared)
    for name in shared:  # (reference.ResidualTail, the block tail's spec, exists in a clone only)
        assert getattr(reference, name) is getattr(cbam_triton.reference, name)
