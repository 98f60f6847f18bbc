"""pytest's JUnit XML (``--junitxml``) read back: totals, the files that reported, the failures."""

from __future__ import annotations

from collections import Counter
from typing import Any
from xml.etree import ElementTree


def parse_junit(path: str) -> dict[str, Any]:
    """From pytest's JUnit XML (``--junitxml``): ``totals`` (passed / failed / error / skipped / xfailed),
    the ``files`` that reported a result, and the ``failures`` (one line each); empty when there is none."""
    try:
        cases = list(ElementTree.parse(path).getroot().iter("testcase"))
    except (OSError, ElementTree.ParseError):
        cases = []
    totals, files, failures = Counter(), set(), []
    for case in cases:
        parts = case.get("classname", "").split(".")
        cut = next((i for i, p in enumerate(parts) if p[:1].isupper()), len(parts))  # then test classes
        nodeid = "::".join(["/".join(parts[:cut]) + ".py", *parts[cut:], case.get("name", "")])
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        status = {None: "passed", "failure": "failed"}.get(getattr(outcome, "tag", None), getattr(outcome, "tag", ""))
        status = "xfailed" if status == "skipped" and outcome.get("type") == "pytest.xfail" else status
        totals[status] += 1
        files.add(nodeid.split("::")[0])
        if status in ("failed", "error"):
            message = (outcome.get("message") or "").strip().splitlines()
            failures.append(f"{status.upper()} {nodeid}" + (f" - {message[0][:200]}" if message else ""))
    return {"totals": dict(totals), "files_reported": sorted(files), "failures": failures}
