"""MkDocs hook: the plots of ``benchmarks/results`` become site files under ``results/files/``.

``benchmarks/results/mnist/plots/roc_AD.png`` is served as
``results/files/mnist/plots/roc_AD.png``, so a results page links the PNG a committed command
wrote, without a copy in ``docs/``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def on_files(files: Files, config) -> Files:
    for png in sorted(_RESULTS.rglob("*.png")):
        uri = "results/files/" + png.relative_to(_RESULTS).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files
