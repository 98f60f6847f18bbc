"""A test-only speed-up of Triton's CPU interpreter: skip re-patching ``triton.language`` on every
call of a ``@triton.jit`` helper inside a launch.

The interpreter patches ``triton.language`` (``_patch_lang``: ``inspect.getmembers`` over the module
and its tensor class, ~0.15 ms) when a launch starts and keeps that patch until the launch ends,
but it patches again on every call of a helper function from a kernel — tens of thousands of times
in a large test (about a third of the interpreter's time in the seed configuration's parity test).
Inside a launch the repeat finds every builtin already patched, so it changes nothing: it is skipped.
Only the tests install this (``tests/conftest.py``); the package never touches Triton's internals.
Where a Triton version lacks the two names it wraps, nothing is installed.
"""

from __future__ import annotations

import threading
from typing import Any


class _NoScope:
    """What a skipped patch returns (a helper call never restores its scope)."""

    def restore(self) -> None:
        pass


def install() -> bool:
    """Wrap the interpreter's ``_patch_lang`` and its launch; returns whether it was installed."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return False
    patch_lang = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    if patch_lang is None or executor is None or getattr(patch_lang, "_cbam_wrapped", False):
        return False
    import triton.language as tl

    state = threading.local()
    launch = executor.__call__
    langs: dict[int, frozenset[int]] = {}  # per function: the language modules its globals hold

    def langs_of(fn: Any) -> frozenset[int]:
        key = langs.get(id(fn))
        if key is None:
            key = langs[id(fn)] = frozenset(id(v) for v in fn.__globals__.values() if v is tl or v is tl.core)
        return key

    def patched_once(fn: Any) -> Any:
        done = getattr(state, "done", None)
        if done is None:  # not inside a launch
            return patch_lang(fn)
        key = langs_of(fn)
        if key <= done:  # the modules this function sees are patched for the rest of the launch
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
