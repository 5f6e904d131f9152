"""Pieces every module of the benchmark shares: the library's error and small text helpers."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A problem with the settings of a run (unknown name, bad size, missing file, ...).

    Raised before any heavy work where possible. The ``uniad`` command prints its message on
    one line and exits with status 2.
    """


def one_line(error: BaseException | str) -> str:
    """``error`` (or ``"Type: message"`` of an exception) on one line, at most 300 characters."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(str(text).split())
    return text if len(text) <= 300 else text[:297] + "..."


def progress(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Iterable[Any]:
    """``iterable`` wrapped in a tqdm progress bar if ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def safe_name(name: str) -> str:
    """``name`` with every run of characters other than ``[A-Za-z0-9_.@-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name).strip("_") or "x"
