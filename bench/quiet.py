"""Library messages that tell the benchmark's user nothing, silenced where the benchmark causes them:
a run prints its progress line and its results."""

from __future__ import annotations

import logging
import warnings


class _DropPrefix(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def quiet_library_noise() -> None:
    """Filter the known messages (each by its text, nothing else): call before the first compile."""
    # the benchmark turns inductor's caches off (cold compiles, honest metrics); dynamo then says that its
    # profile-guided cache is off too, once per compile
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled by torch.compiler.config",
                            category=UserWarning)
    # CPU runs: inductor's C++ build looks for a CUDA toolkit that it does not need there
    logging.getLogger("torch.utils.cpp_extension").addFilter(_DropPrefix("No CUDA runtime is found"))
