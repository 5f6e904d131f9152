"""The package's layers import one way: each rule names modules and what they must not import.

Every module of ``uniad_plugin`` is parsed with :mod:`ast` (nothing is imported): every
``import``, ``from ... import`` (relative ones resolved, those inside functions and under
``TYPE_CHECKING`` included) and ``importlib.import_module("...")`` with a literal name counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "uniad_plugin"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

#: (modules the rule covers, modules they must not import, why)
RULES: tuple[tuple[tuple[str, ...], tuple[str, ...], str], ...] = (
    (
        ("uniad_plugin.detectors", "uniad_plugin.nn"),
        (
            "uniad_plugin.benchmark",
            "uniad_plugin.anomalies",
            "uniad_plugin.cli",
            "uniad_plugin.data",
            "uniad_plugin.distributed",
        ),
        "the detectors and their mechanisms are the bottom layer",
    ),
    (
        ("uniad_plugin.data",),
        ("uniad_plugin.benchmark", "uniad_plugin.anomalies"),
        "the ID data sit below the anomaly sets and the benchmark",
    ),
    (
        ("uniad_plugin.anomalies",),
        ("uniad_plugin.benchmark", "uniad_plugin.cli", "uniad_plugin.distributed"),
        "the anomaly sets sit below the benchmark; several processes enter through a seam",
    ),
    (
        ("uniad_plugin.benchmark",),
        ("uniad_plugin.cli",),
        "the command sits on top of the benchmark",
    ),
    (
        ("uniad_plugin.errors", "uniad_plugin.imglists"),
        ("uniad_plugin",),
        "the shared low-level modules import nothing from the package",
    ),
)


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of the module at ``path`` of the package at ``root``."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every import of ``source`` (the module ``module``); a
    ``from A import b`` gives ``A.b`` (a submodule or a name of ``A``: both are in ``A``)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def violations(root: Path = ROOT, rules=RULES) -> list[str]:
    """One line per import that breaks a rule: the module, the line, the import, the rule."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        source = path.read_text(encoding="utf-8")
        for covered, forbidden, why in rules:
            if not any(_within(module, c) for c in covered):
                continue
            for line, name in imported_names(source, module, path.name == "__init__.py"):
                bad = next((f for f in forbidden if _within(name, f)), None)
                if bad is not None:
                    out.append(
                        f"{module} ({path.relative_to(root.parent)}:{line}) imports {name}: "
                        f"{module} must not import {bad} ({why})"
                    )
    return out


def test_the_layers_import_one_way():
    found = violations()
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_every_rule_covers_existing_modules():
    names = {module_name(p) for p in ROOT.rglob("*.py")}
    for covered, forbidden, _ in RULES:
        for prefix in (*covered, *forbidden):
            assert any(_within(n, prefix) for n in names), f"no module {prefix}"


@pytest.mark.parametrize(
    ("relative", "source", "expected"),
    [
        ("nn/x.py", "from uniad_plugin.benchmark import run\n", "uniad_plugin.benchmark.run"),
        ("nn/x.py", "def f():\n    import uniad_plugin.data\n", "uniad_plugin.data"),
        ("detectors/x.py", "from .. import distributed as dist\n", "uniad_plugin.distributed"),
        ("detectors/x.py", "from ..cli import main\n", "uniad_plugin.cli.main"),
        ("data.py", "from uniad_plugin.anomalies.openood import x\n", "uniad_plugin.anomalies"),
        ("anomalies/x.py", "from uniad_plugin import distributed\n", "uniad_plugin.distributed"),
        (
            "anomalies/x.py",
            "import importlib\nimportlib.import_module('uniad_plugin.benchmark.run')\n",
            "uniad_plugin.benchmark.run",
        ),
        ("errors.py", "from uniad_plugin._utils import x\n", "uniad_plugin._utils"),
    ],
)
def test_a_bad_import_is_named(tmp_path, relative, source, expected):
    root = tmp_path / PACKAGE
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source, encoding="utf-8")
    (path.parent / "__init__.py").touch()
    (root / "__init__.py").touch()
    found = violations(root)
    module = module_name(path, root)
    assert len(found) == 1 and found[0].startswith(f"{module} ({PACKAGE}/{relative}:")
    assert f"imports {expected}" in found[0]


def test_allowed_imports_pass(tmp_path):
    root = tmp_path / PACKAGE
    (root / "nn").mkdir(parents=True)
    (root / "__init__.py").touch()
    (root / "nn" / "__init__.py").write_text("from . import taps\n", encoding="utf-8")
    (root / "nn" / "taps.py").write_text(
        "from uniad_plugin._utils import eval_mode\nfrom uniad_plugin.nn.alarms import x\n",
        encoding="utf-8",
    )
    (root / "data.py").write_text("from uniad_plugin.errors import ConfigError\n")
    assert violations(root) == []
