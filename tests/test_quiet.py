"""The benchmark silences the library messages it causes that tell its user nothing, and only those."""

from __future__ import annotations

import logging
import warnings

from bench.quiet import quiet_library_noise


def test_known_messages_are_dropped_and_others_kept(caplog):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_library_noise()
        warnings.warn("dynamo_pgo force disabled by torch.compiler.config.force_disable_caches", UserWarning,
                      stacklevel=1)
        warnings.warn("something the user should read", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["something the user should read"]
    log = logging.getLogger("torch.utils.cpp_extension")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        log.warning("No CUDA runtime is found, using CUDA_HOME='/usr/local'")
        log.warning("a compiler error")
    assert [r.getMessage() for r in caplog.records] == ["a compiler error"]
