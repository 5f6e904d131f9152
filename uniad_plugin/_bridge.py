"""Make every detector registered in the ``pytorch_ood.detectors`` entry-point group
importable from :mod:`pytorch_ood.detector`.

pytorch-ood itself has no plugin mechanism, so the bridge adds one from the outside:

* At interpreter start, the ``uniad_plugin_bridge.pth`` file that ``pip install`` puts in
  site-packages imports :mod:`uniad_plugin`, which calls :func:`install`.
* :func:`install` puts a small finder on :data:`sys.meta_path`. When
  ``pytorch_ood.detector`` is imported, the finder lets the normal machinery load it and then
  adds a module-level ``__getattr__`` (PEP 562) that resolves unknown names through the entry
  points. If the module is already imported, it is patched at once.
* Nothing heavy happens at start-up: torch is not imported and the entry points are only read
  on the first lookup of a name that pytorch-ood does not define itself.

A third party registers its own detector with one table in its ``pyproject.toml``::

    [project.entry-points."pytorch_ood.detectors"]
    MyDetector = "my_package.module:MyDetector"
"""

import sys

TARGET_MODULE = "pytorch_ood.detector"
ENTRY_POINT_GROUP = "pytorch_ood.detectors"

_PATCHED_FLAG = "__uniad_bridge__"
_registry: dict | None = None


def registered_detectors() -> dict:
    """Return ``{name: EntryPoint}`` for every detector in the entry-point group.

    The result is read once per process and cached.
    """
    global _registry
    if _registry is None:
        from importlib.metadata import entry_points

        _registry = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return _registry


def load_detector(name: str):
    """Load the detector class registered under ``name``.

    :raises KeyError: if no detector of that name is registered
    """
    registry = registered_detectors()
    if name not in registry:
        raise KeyError(
            f"no detector named {name!r} in entry-point group {ENTRY_POINT_GROUP!r}; "
            f"registered: {sorted(registry)}"
        )
    return registry[name].load()


def _patch(module) -> None:
    if getattr(module, _PATCHED_FLAG, False):
        return
    previous_getattr = module.__dict__.get("__getattr__")

    def __getattr__(name: str):
        if not name.startswith("__"):
            registry = registered_detectors()
            if name in registry:
                value = registry[name].load()
                setattr(module, name, value)
                return value
        if previous_getattr is not None:
            return previous_getattr(name)
        raise AttributeError(f"module {TARGET_MODULE!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(module.__dict__) | set(registered_detectors()))

    module.__getattr__ = __getattr__
    module.__dir__ = __dir__
    setattr(module, _PATCHED_FLAG, True)


class _PatchingLoader:
    """Delegates to the real loader, then patches the freshly executed module."""

    def __init__(self, loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _patch(module)

    def __getattr__(self, name: str):
        return getattr(self._loader, name)


class _BridgeFinder:
    """Meta path finder that only reacts to ``pytorch_ood.detector``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET_MODULE:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None
        spec.loader = _PatchingLoader(spec.loader)
        return spec

    def invalidate_caches(self) -> None:  # pragma: no cover - nothing cached
        pass


def install() -> None:
    """Install the bridge (idempotent). Called by ``import uniad_plugin``."""
    module = sys.modules.get(TARGET_MODULE)
    if module is not None:
        _patch(module)
    if not any(isinstance(f, _BridgeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _BridgeFinder())
