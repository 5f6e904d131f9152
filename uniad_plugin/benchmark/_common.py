"""Pieces every module of the benchmark shares: small text helpers, and the library's error
(defined in :mod:`uniad_plugin.errors`)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from uniad_plugin.errors import ConfigError, one_line

__all__ = ["ConfigError", "one_line", "progress", "safe_name"]


def progress(iterable: Iterable[Any], enabled: bool, **kwargs: Any) -> Iterable[Any]:
    """``iterable`` wrapped in a tqdm progress bar if ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def safe_name(name: str) -> str:
    """``name`` with every run of characters other than ``[A-Za-z0-9_.@-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name).strip("_") or "x"
