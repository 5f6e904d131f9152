"""Entry-point registration and the bridge into ``pytorch_ood.detector``."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(code: str, *flags: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, cwd="/"
    )


def test_entry_point_registered():
    eps = {ep.name: ep.value for ep in entry_points(group="pytorch_ood.detectors")}
    assert eps["UniformDetector"] == "uniad_plugin.detectors.uniform:UniformDetector"


def test_from_import_without_importing_the_plugin():
    out = run(
        "import sys\n"
        "from pytorch_ood.detector import UniformDetector\n"
        "print(UniformDetector.__module__)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "uniad_plugin.detectors.uniform"


def test_attribute_access_and_dir():
    out = run(
        "import pytorch_ood.detector as d\n"
        "assert 'UniformDetector' in dir(d)\n"
        "print(d.UniformDetector.__name__)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "UniformDetector"


@pytest.mark.slow
def test_unknown_name_still_raises_attribute_error():
    out = run(
        "import pytorch_ood.detector as d\n"
        "try:\n"
        "    d.NoSuchDetector\n"
        "except AttributeError as e:\n"
        "    print('AttributeError', e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert "NoSuchDetector" in out.stdout
    out = run("from pytorch_ood.detector import NoSuchDetector")
    assert out.returncode != 0 and "ImportError" in out.stderr


def test_interpreter_start_does_not_import_torch():
    out = run("import sys; print('torch' in sys.modules, 'uniad_plugin' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    out = run("import sys, uniad_plugin; print('torch' in sys.modules)")
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_import_uniad_plugin_registers_under_dash_S():
    """``python -S`` skips .pth files; importing the package must install the bridge."""
    paths = [sysconfig.get_paths()["purelib"], str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    # pytorch_ood.detector imported first: the bridge patches the loaded module
    out = run(
        "import sys\n"
        "import pytorch_ood.detector as d\n"
        "assert not hasattr(d, 'UniformDetector')\n"
        "import uniad_plugin\n"
        "from pytorch_ood.detector import UniformDetector\n"
        "print(UniformDetector.__name__)\n",
        "-S",
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "UniformDetector"
    # plugin imported first: the finder patches pytorch_ood.detector when it loads
    out = run(
        "import uniad_plugin\nfrom pytorch_ood.detector import UniformDetector\nprint('ok')",
        "-S",
        env=env,
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.slow
def test_without_bridge_under_dash_S_name_is_missing():
    """Shows the test above is meaningful: without ``import uniad_plugin`` it fails."""
    paths = [sysconfig.get_paths()["purelib"], str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out = run("from pytorch_ood.detector import UniformDetector", "-S", env=env)
    assert out.returncode != 0
    assert "cannot import name 'UniformDetector'" in out.stderr, out.stderr


@pytest.mark.slow
def test_lazy_public_names():
    out = run(
        "import sys, uniad_plugin\n"
        "assert 'torch' not in sys.modules\n"
        "cls = uniad_plugin.UniformDetector\n"
        "from pytorch_ood.detector import UniformDetector\n"
        "assert cls is UniformDetector\n"
        "print(uniad_plugin.__version__)\n"
    )
    assert out.returncode == 0, out.stderr
