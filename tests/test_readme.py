"""The README as a user meets it: short, every Python block runs as written (CPU: the kernels in
Triton's interpreter), every relative link of the README and the docs resolves (file and heading),
and no tracked line speaks of anything but the software."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_LINES = 250


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines (at most {MAX_LINES}: details belong in docs/)"


def test_readme_python_blocks_run_as_written(tmp_path, monkeypatch):
    """All Python blocks of the README, in order, in one namespace (as a user pastes them)."""
    pytest.importorskip("timm")
    pytest.importorskip("onnxscript")
    monkeypatch.chdir(tmp_path)
    blocks = _blocks(README.read_text(), "python")
    assert len(blocks) >= 4
    scope: dict[str, object] = {"__name__": "__readme__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), scope)  # noqa: S102 - the README's own code
    assert scope["err"] < 1e-4 and len(scope["replaced"]) == 8


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_relative_links_resolve(doc):
    text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S))
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


#: words that speak of how the project is worked on rather than of the software
_NOT_ABOUT_THE_SOFTWARE = re.compile(r"\blent\b|\bbeen lent\b|\bworkplace\b|\bdevice tool\b|\bGPU sessions?\b",
                                     re.I)


def test_no_tracked_line_speaks_of_how_the_project_is_worked_on():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    hits = []
    for name in files.splitlines():
        path = ROOT / name
        if name.startswith("bench/results/") or path.suffix not in {".py", ".md", ".sh", ".toml", ".txt", ""}:
            continue
        if path.name == "test_readme.py" or not path.is_file():
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _NOT_ABOUT_THE_SOFTWARE.search(line):
                hits.append(f"{name}:{i}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
