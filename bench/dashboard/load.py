"""Finding and reading the dashboard's inputs: result documents, study summaries, the history file.

A path given to the dashboard is a ``results.json`` file or a folder; a folder contributes every
``results.json`` below it, the ``study.json`` beside each one (per-provider summaries of a study) and
every ``history.jsonl`` below it (one JSON record per measurement).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

#: where the committed runs live (the default input of ``python -m bench dashboard``)
RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


@dataclass
class Run:
    """One result document, where it came from and the study summary beside it (if any)."""

    doc: dict[str, Any]
    source: str = ""
    study: dict[str, Any] | None = None


@dataclass
class Inputs:
    """Everything the dashboard shows: the runs (oldest first) and the history records."""

    runs: list[Run] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def read_history(path: str) -> list[dict[str, Any]]:
    """The records of a history file (JSON lines; blank lines skipped, a broken line raises ValueError)."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: not a JSON record: {exc}") from exc
            if isinstance(rec, dict):
                records.append(rec)
    return records


def load_inputs(paths: list[str] | None = None) -> Inputs:
    """Read result files and folders (default: the committed runs under bench/results/)."""
    paths = list(paths or [RESULTS_DIR])
    result_files: list[str] = []
    history_files: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                if "results.json" in files:
                    result_files.append(os.path.join(folder, "results.json"))
                if "history.jsonl" in files:
                    history_files.append(os.path.join(folder, "history.jsonl"))
        elif path.endswith(".jsonl"):
            history_files.append(path)
        elif os.path.isfile(path):
            result_files.append(path)
        else:
            raise ValueError(f"no such result file or folder: {path}")
    inputs = Inputs()
    for path in dict.fromkeys(result_files):
        try:
            doc = _read_json(path)
        except ValueError as exc:
            raise ValueError(f"{path} is not a valid result document: {exc}") from exc
        study_path = os.path.join(os.path.dirname(path), "study.json")
        study = _read_json(study_path) if os.path.isfile(study_path) else None
        inputs.runs.append(Run(doc, os.path.relpath(os.path.dirname(os.path.abspath(path))), study))
    inputs.runs.sort(key=lambda r: str(r.doc.get("env", {}).get("date", "")) if isinstance(r.doc, dict) else "")
    for path in dict.fromkeys(history_files):
        inputs.history += read_history(path)
    return inputs
