"""A test-only speed-up of Triton's CPU interpreter: skip re-patching ``triton.language`` on every
call of a ``@triton.jit`` helper inside a launch.

The interpreter patches ``triton.language`` (``_patch_lang``: ``inspect.getmembers`` over the module
and its tensor class, ~0.15 ms) when a launch starts and keeps that patch until the launch ends,
but it patches again on every call of a helper function from a kernel — tens of thousands of times
in a large test (the parity, window and fused-forward test files in one process: 98 s with the
repeats, 59 s without, on two cores).
Inside a launch the repeat finds every builtin already patched, so it changes nothing: it is skipped.
Only the tests install this (``tests/conftest.py``); the package never touches Triton's internals.
It relies on two things Triton 3.6-3.9 do: a helper call never restores its patch (only the launch
does), and the package runs one interpreter launch at a time (``INTERPRETER_LOCK``). Other Triton
versions, one lacking the two names it wraps, or ``CBAM_TEST_FAST_INTERPRETER=0`` get the
interpreter as it is.
"""

from __future__ import annotations

import os
import threading
from typing import Any

#: the Triton versions whose interpreter this was checked against (major, minor)
TESTED = ((3, 6), (3, 7), (3, 8), (3, 9))


class _NoScope:
    """What a skipped patch returns (a helper call never restores its scope)."""

    def restore(self) -> None:
        pass


def install() -> bool:
    """Wrap the interpreter's ``_patch_lang`` and its launch; returns whether it was installed."""
    if os.environ.get("CBAM_TEST_FAST_INTERPRETER", "1") == "0":
        return False
    try:
        import triton
        from triton.runtime import interpreter
    except ImportError:
        return False
    if tuple(int(v) for v in triton.__version__.split(".")[:2]) not in TESTED:
        return False
    patch_lang = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    if patch_lang is None or executor is None or getattr(patch_lang, "_cbam_wrapped", False):
        return False
    import triton.language as tl

    state = threading.local()
    launch = executor.__call__
    langs: dict[Any, frozenset[int]] = {}  # per function: the language modules its globals hold

    def langs_of(fn: Any) -> frozenset[int]:
        key = langs.get(fn)
        if key is None:
            key = langs[fn] = frozenset(id(v) for v in fn.__globals__.values() if v is tl or v is tl.core)
        return key

    def patched_once(fn: Any) -> Any:
        done = getattr(state, "done", None)
        if done is None:  # not inside a launch
            return patch_lang(fn)
        key = langs_of(fn)
        if key and key <= done:  # the modules this function sees are patched for the rest of the launch
            # (none seen: Triton's own check that triton.language is visible must still run)
            return _NoScope()
        scope = patch_lang(fn)  # (Triton's own helpers see triton.language.core, the kernels triton.language)
        done |= key
        return scope

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        saved = getattr(state, "done", None)
        state.done = set()
        try:
            return launch(self, *args, **kwargs)
        finally:
            state.done = saved

    patched_once._cbam_wrapped = True  # type: ignore[attr-defined]
    interpreter._patch_lang = patched_once
    executor.__call__ = call
    return True
