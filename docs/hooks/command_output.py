"""MkDocs hook: text produced at build time, so that pages cannot drift from the code and data.

* ``<!-- uniad: ARGS -->`` becomes the output of ``uniad ARGS`` (the CLI reference shows the
  command's own ``--help`` and ``--list-detectors``, from :func:`uniad_plugin.cli.main`).
* ``<!-- table: PATH N -->`` becomes the N-th Markdown table (1-based) of the file PATH
  (relative to the repository root), copied verbatim: a results file of ``benchmarks/results``
  can hold several tables and grow rows when it is regenerated, which a fixed line range of
  ``pymdownx.snippets`` would cut. A missing file or table fails the build.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

_MARKER = re.compile(r"^<!-- uniad:(?P<args>[^>]*)-->[ \t]*$", re.MULTILINE)
_TABLE = re.compile(r"^<!-- table: (?P<path>\S+) (?P<n>\d+) -->[ \t]*$", re.MULTILINE)


def _run(args: list[str]) -> str:
    from uniad_plugin.cli import main

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"  # argparse wraps help to the terminal width
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            status = main(args)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    if status != 0:
        raise RuntimeError(f"'uniad {shlex.join(args)}' exited with {status}: {out.getvalue()}")
    return out.getvalue().rstrip()


def _table(root: Path, path: str, n: int) -> str:
    tables: list[list[str]] = []
    previous = ""
    for line in (root / path).read_text(encoding="utf-8").splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    if not 1 <= n <= len(tables):
        raise ValueError(f"{path} has {len(tables)} Markdown tables, table {n} was asked for")
    return "\n".join(tables[n - 1])


def on_page_markdown(markdown: str, config, **kwargs) -> str:
    root = Path(config["config_file_path"]).parent

    def command(m: re.Match) -> str:
        args = shlex.split(m.group("args"))
        return f"```text\n$ uniad {shlex.join(args)}\n{_run(args)}\n```"

    def table(m: re.Match) -> str:
        return _table(root, m.group("path"), int(m.group("n")))

    return _TABLE.sub(table, _MARKER.sub(command, markdown))
