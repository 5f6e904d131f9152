"""The library's error for bad settings and its one-line message helper.

A low-level module: every layer of the package (the data, the anomaly sets, the benchmark and
the command) may raise :class:`ConfigError`; it imports nothing from the package.
"""

from __future__ import annotations

__all__ = ["ConfigError", "one_line"]


class ConfigError(ValueError):
    """A problem with the settings of a run (unknown name, bad size, missing file, ...).

    Raised before any heavy work where possible. Its message names the arguments of the
    function that raised it; the ``uniad`` command prints it on one line (with its own
    options in place of the arguments) and exits with status 2.
    """


def one_line(error: BaseException | str) -> str:
    """``error`` (or ``"Type: message"`` of an exception) on one line, at most 300 characters."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."
