"""The detectors of this package, one module per method, each a pytorch-ood detector.

``from uniad_plugin.detectors import A3`` imports only that detector's module: the names are
resolved on first access.
"""

from __future__ import annotations

import importlib

#: public name -> module that defines it
_MODULES: dict[str, str] = {
    "UniformDetector": "uniad_plugin.detectors.uniform",
    "A3": "uniad_plugin.detectors.a3",
    "ConfoundingGradients": "uniad_plugin.detectors.gradients",
    "R2AD2": "uniad_plugin.detectors.r2ad2",
}

__all__ = list(_MODULES)


def __getattr__(name: str) -> object:
    module_name = _MODULES.get(name)
    if module_name is None:
        raise AttributeError(f"module 'uniad_plugin.detectors' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
