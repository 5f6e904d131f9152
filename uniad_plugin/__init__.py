"""uniad-plugin: one framework for out-of-distribution, adversarial and noise inputs.

Importing this package is cheap: it does not import torch. It installs the bridge that
makes every detector registered in the ``pytorch_ood.detectors`` entry-point group
importable from :mod:`pytorch_ood.detector`, and exposes the public names lazily.
"""

from uniad_plugin import _bridge

__version__ = "0.1.0"

_bridge.install()

#: public name -> module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    "UniformDetector": "uniad_plugin.detectors.uniform",
    "A3": "uniad_plugin.detectors.a3",
    "ConfoundingGradients": "uniad_plugin.detectors.gradients",
    "R2AD2": "uniad_plugin.detectors.r2ad2",
}

__all__ = ["__version__", *_LAZY]

# no `typing` import here: this module runs at every interpreter start (see _bridge)


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'uniad_plugin' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
