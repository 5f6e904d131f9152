"""A run's detectors in one ranked table, near- and far-OOD apart: the leaderboard.

Where ``table.md`` has a line per anomaly set and a column per detector, the leaderboard has a
line per detector, ranked by the overall mean (best first), with the class means (OOD, or
near-OOD and far-OOD apart; AD; NS), the overall mean, the worst set of each class (its value
and name) and the detection rate at 5% FPR averaged over all sets. The classifier's accuracy
on the ID test images is the line above it. A detector that was skipped or failed is listed,
unranked, with its reason; the model-free ``Pixel*`` baselines come last, unranked.

Near-OOD sets are the OOD sets a run names with ``--near-ood`` (``RunConfig.near_ood``), kept
in ``results.json`` under ``meta.near_ood`` (OpenOOD's sets bring their own group); every other
OOD set is far-OOD. Without them there is one OOD column.

``uniad --out DIR`` writes ``DIR/leaderboard.md`` (:func:`save_leaderboard`, AUROC) and prints
the leaderboard after the table. For a run already on disk::

    python -m uniad_plugin.benchmark.leaderboard DIR/results.json [--near-ood NAME ...]
        [--metric AUROC] [--format markdown|text] [--out FILE]

prints (or writes to ``FILE``) the leaderboard of its ``results.json`` without rerunning
anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from uniad_plugin.benchmark._common import ConfigError
from uniad_plugin.benchmark.evaluation import (
    ALL,
    DR_METRIC,
    KINDS,
    LOWER_IS_BETTER,
    MEAN,
    METRICS,
    SUMMARY_SETS,
)
from uniad_plugin.benchmark.reporting import SEPARABLE_MARK, accuracy_lines
from uniad_plugin.benchmark.wiring import is_sanity

__all__ = [
    "LEADERBOARD_FILE",
    "Standing",
    "check_near_ood",
    "leaderboard",
    "main",
    "near_far_groups",
    "near_ood_of",
    "save_leaderboard",
    "standings",
]

#: the file :func:`save_leaderboard` writes beside ``table.md``
LEADERBOARD_FILE = "leaderboard.md"
#: the column keys of the near- and far-OOD means
NEAR, FAR = "near-OOD", "far-OOD"


@dataclass
class Standing:
    """One detector's line of the leaderboard (see :func:`standings`).

    :param detector: the detector's name
    :param model_free: a model-free ``Pixel*`` baseline (listed last, not ranked)
    :param rank: its place (1 is best) among the detectors with numbers that use the model;
        ``None`` for the baselines and for detectors without numbers
    :param means: column -> mean of the metric: ``"OOD"`` (or ``"near-OOD"`` and
        ``"far-OOD"``), ``"AD"``, ``"NS"``; the unweighted mean over the sets without error
    :param overall: the mean of the class means (the ``all | mean`` line of ``table.md``)
    :param worst: class -> ``(value, set name)`` of the class's worst set
    :param detection_rate: :data:`DR_METRIC` averaged over all sets without error
    :param reason: why the detector has no numbers (skipped or failed), else ``None``
    :param errors: ``(set, error)`` of the sets it has no numbers on
    """

    detector: str
    model_free: bool
    rank: int | None = None
    means: dict[str, float] = field(default_factory=dict)
    overall: float = math.nan
    worst: dict[str, tuple[float, str]] = field(default_factory=dict)
    detection_rate: float = math.nan
    reason: str | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)


def _value(row: Mapping[str, Any], metric: str) -> float:
    """The row's metric as a float; a missing number (``None`` in JSON) is NaN."""
    v = row.get(metric)
    return math.nan if v is None else float(v)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _ood_names(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The OOD sets of the rows, in their order."""
    return list(
        dict.fromkeys(
            r["Dataset"] for r in rows if r["Class"] == "OOD" and r["Dataset"] not in SUMMARY_SETS
        )
    )


def check_near_ood(near_ood: Sequence[str] | None, ood_names: Sequence[str]) -> list[str] | None:
    """The near-OOD set names, once each, in the order given; ``None`` stays ``None``.

    :param ood_names: the run's OOD sets
    :raises ConfigError: on a name that is not one of ``ood_names`` (the message names them)
    """
    if near_ood is None:
        return None
    names = [str(n) for n in near_ood]
    unknown = [n for n in names if n not in ood_names]
    if unknown:
        known = ", ".join(ood_names) if ood_names else "none"
        raise ConfigError(
            f"unknown near-OOD set {', '.join(repr(n) for n in unknown)} (near_ood=): expected "
            f"names of the run's OOD sets: {known}"
        )
    return list(dict.fromkeys(names))


def near_far_groups(
    near_ood: Sequence[str] | None, anomalies: Sequence[Any]
) -> dict[str, str] | None:
    """Set name -> ``"near"`` or ``"far"`` for every OOD set of ``anomalies`` (objects with
    ``kind`` and ``name``): the named ones near, the others far; ``None`` if ``near_ood`` is.

    :raises ConfigError: as :func:`check_near_ood`
    """
    ood = [a.name for a in anomalies if a.kind == "OOD"]
    near = check_near_ood(near_ood, ood)
    if near is None:
        return None
    return {n: "near" if n in near else "far" for n in ood}


def near_ood_of(meta: Mapping[str, Any]) -> list[str] | None:
    """The near-OOD sets of a run's details: ``meta["near_ood"]``, else the OOD sets whose
    group (``meta["anomaly_sets"][i]["info"]["group"]``, OpenOOD's) is ``"near"`` when any OOD
    set has a group; ``None`` if neither (one OOD column)."""
    if meta.get("near_ood") is not None:
        return list(meta["near_ood"])
    ood = [a for a in meta.get("anomaly_sets", []) if a.get("kind") == "OOD"]
    grouped = [a for a in ood if (a.get("info") or {}).get("group") is not None]
    if not grouped:
        return None
    return [a["name"] for a in grouped if a["info"]["group"] == "near"]


def _worst(metric: str, rows: Sequence[Mapping[str, Any]]) -> tuple[float, str] | None:
    """The worst value of ``metric`` over ``rows`` and its set (the first of equal ones); NaN
    values are left out."""
    scored = [(_value(r, metric), r["Dataset"]) for r in rows if not math.isnan(_value(r, metric))]
    if not scored:
        return None
    pick = max if metric in LOWER_IS_BETTER else min
    value = pick(v for v, _ in scored)
    return value, next(name for v, name in scored if v == value)


def _standing(
    rows: Sequence[Mapping[str, Any]], detector: str, metric: str, near: Sequence[str] | None
) -> Standing:
    mine = [r for r in rows if r["Detector"] == detector]
    per_set = [r for r in mine if r["Class"] in KINDS and r["Dataset"] not in SUMMARY_SETS]
    valid = [r for r in per_set if r["Error"] is None]
    s = Standing(detector, is_sanity(detector))
    s.errors = [
        (r["Dataset"], r["Error"]) for r in per_set if r["Error"] not in (None, "empty set")
    ]
    if not valid:
        overall = [r for r in mine if r["Class"] == ALL and r["Dataset"] == MEAN]
        s.reason = (overall[0]["Error"] if overall else None) or "no anomaly set was scored"
        return s
    class_means = []
    for kind in KINDS:
        members = [r for r in valid if r["Class"] == kind]
        if not members:
            continue
        m = _mean([_value(r, metric) for r in members])
        class_means.append(m)
        s.means[kind] = m
        worst = _worst(metric, members)
        if worst is not None:
            s.worst[kind] = worst
        if kind == "OOD" and near is not None:
            for key, group in (
                (NEAR, [r for r in members if r["Dataset"] in near]),
                (FAR, [r for r in members if r["Dataset"] not in near]),
            ):
                if group:
                    s.means[key] = _mean([_value(r, metric) for r in group])
    # the overall mean exactly as summarise() computes the "all | mean" row
    s.overall = _mean(class_means)
    s.detection_rate = _mean([_value(r, DR_METRIC) for r in valid])
    return s


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"expected metric in {METRICS}, got {metric!r}")


def standings(
    rows: Sequence[Mapping[str, Any]],
    *,
    near_ood: Sequence[str] | None = None,
    metric: str = "AUROC",
) -> list[Standing]:
    """Every detector of ``rows`` in leaderboard order: the detectors with numbers that use
    the model, ranked by the overall mean of ``metric`` (best first: highest, lowest for
    :data:`LOWER_IS_BETTER`; equal ones in the order of the rows), then those without numbers
    (skipped or failed), then the model-free ``Pixel*`` baselines in the same order.

    :param rows: result rows (:meth:`UnifiedBenchmark.evaluate`, or ``results.json``'s)
    :param near_ood: the near-OOD sets (see :func:`check_near_ood`); ``None``: one OOD mean
    :raises ConfigError: on an unknown metric or near-OOD set
    """
    _check_metric(metric)
    near = check_near_ood(near_ood, _ood_names(rows))
    detectors = list(dict.fromkeys(r["Detector"] for r in rows))
    lines = [_standing(rows, d, metric, near) for d in detectors]
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def ordered(group: list[Standing]) -> list[Standing]:
        ranked = [s for s in group if not math.isnan(s.overall)]
        ranked.sort(key=lambda s: sign * s.overall)
        return ranked + [s for s in group if math.isnan(s.overall)]

    model = ordered([s for s in lines if not s.model_free])
    for i, s in enumerate(x for x in model if not math.isnan(x.overall)):
        s.rank = i + 1
    return model + ordered([s for s in lines if s.model_free])


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _columns(rows: Sequence[Mapping[str, Any]], near: Sequence[str] | None) -> list[str]:
    """The mean columns: a class's only where the run has sets of it; near- and far-OOD
    instead of OOD when the near-OOD sets are given (each only if it has sets)."""
    present = [k for k in KINDS if any(r["Class"] == k for r in rows)]
    if not any(r["Dataset"] not in SUMMARY_SETS for r in rows):
        present = list(KINDS)  # no set at all: the empty table still shows its columns
    cols = []
    for k in present:
        if k == "OOD" and near is not None:
            ood = _ood_names(rows)
            cols += [NEAR] if any(n in near for n in ood) else []
            cols += [FAR] if any(n not in near for n in ood) else []
        else:
            cols.append(k)
    return cols


def leaderboard(
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any] | None = None,
    *,
    near_ood: Sequence[str] | None = None,
    metric: str = "AUROC",
    fmt: str = "markdown",
) -> str:
    """The leaderboard of a run as Markdown or aligned text: the classifier's accuracy, the
    table (see :func:`standings`) and what its columns are.

    :param rows: result rows
    :param meta: run details (``results.json``'s ``meta``): the accuracy line, and the
        near-OOD sets when ``near_ood`` is not given (see :func:`near_ood_of`)
    :param near_ood: the near-OOD sets, replacing the run's
    :param metric: one of :data:`METRICS`
    :param fmt: ``"markdown"`` or ``"text"``
    :raises ConfigError: on an unknown metric, format or near-OOD set
    """
    if fmt not in ("markdown", "text"):
        raise ConfigError(f"expected fmt 'markdown' or 'text', got {fmt!r}")
    meta = meta or {}
    near = near_ood if near_ood is not None else near_ood_of(meta)
    lines = standings(rows, near_ood=near, metric=metric)
    near = check_near_ood(near, _ood_names(rows))
    cols = _columns(rows, near)
    kinds = [k for k in KINDS if k in cols or (k == "OOD" and (NEAR in cols or FAR in cols))]
    flagged = {r["Dataset"] for r in rows if r.get("PixelSeparable")}
    header = ["#", "Detector", *(f"{c} mean" for c in cols), "overall mean"]
    header += [f"worst {k}" for k in kinds] + [f"{DR_METRIC} (all sets)", "Note"]
    body = [_line(s, cols, kinds, flagged) for s in lines]
    lower = ", lower is better" if metric in LOWER_IS_BETTER else ""
    title = f"Leaderboard ({metric}{lower}): detectors ranked by the overall mean, best first"
    notes = _notes(rows, lines, metric, near, kinds, flagged)
    head = accuracy_lines(meta)
    if fmt == "markdown":
        return _markdown(head, title, header, body, notes)
    return _text(head, title, header, body, notes)


def _line(s: Standing, cols: Sequence[str], kinds: Sequence[str], flagged: set[str]) -> list[str]:
    rank = str(s.rank) if s.rank is not None else "-"
    if s.reason is not None:
        note = s.reason
    elif s.errors:
        n = len(s.errors)
        note = f"no numbers on {n} set{'s' if n > 1 else ''} (below)"
    else:
        note = ""
    if s.model_free:
        note = "model-free baseline" + (f"; {note}" if note else "")
    if s.reason is not None:
        blank = [""] * (len(cols) + 1 + len(kinds) + 1)
        return [rank, s.detector, *blank, note]
    cells = [_fmt(s.means.get(c, math.nan)) for c in cols] + [_fmt(s.overall)]
    for k in kinds:
        w = s.worst.get(k)
        mark = f" {SEPARABLE_MARK}" if w is not None and w[1] in flagged else ""
        cells.append("-" if w is None else f"{_fmt(w[0])} ({w[1]}{mark})")
    return [rank, s.detector, *cells, _fmt(s.detection_rate), note]


def _notes(
    rows: Sequence[Mapping[str, Any]],
    lines: Sequence[Standing],
    metric: str,
    near: Sequence[str] | None,
    kinds: Sequence[str],
    flagged: set[str],
) -> list[str]:
    """What the columns are, which sets are marked, and the errors."""
    notes = [
        f"overall mean: the mean of the class means ({', '.join(kinds) or 'none'}), each class "
        f"mean the unweighted mean of {metric} over the class's sets without error, so every "
        "class weighs the same however many sets it has: the 'all | mean' line of table.md"
        + ("; the OOD class mean in it averages near- and far-OOD sets together" if near else "")
        + "."
    ]
    if near is not None:
        far = [n for n in _ood_names(rows) if n not in near]
        notes.append(
            f"near-OOD: {', '.join(near) or 'none'}; far-OOD: every other OOD set "
            f"({', '.join(far) or 'none'}); each column the unweighted mean over its sets."
        )
    worst = "highest" if metric in LOWER_IS_BETTER else "lowest"
    notes.append(
        f"worst <class>: the class's set with the {worst} {metric} (the one an attacker would "
        "pick), and its name."
    )
    notes.append(
        f"{DR_METRIC} (all sets): the share of each anomaly set flagged at the threshold that "
        "flags 5% of the held-out ID images, averaged over all sets without error, each set "
        "weighing the same (unlike the overall mean)."
    )
    if flagged:
        order = [n for n in dict.fromkeys(r["Dataset"] for r in rows) if n in flagged]
        notes.append(
            f"{SEPARABLE_MARK} = a model-free Pixel* baseline separates this set from the ID "
            f"test set (AUROC >= 0.9), so it says little about a detector: {', '.join(order)}."
        )
    if any(s.model_free for s in lines):
        notes.append(
            "model-free baselines (Pixel*): they score the pixels alone, without the "
            "classifier; listed last and not ranked."
        )
    for s in lines:
        notes.extend(f"{s.detector} [{name}]: {error}" for name, error in s.errors)
    return notes


def _markdown(
    head: Sequence[str], title: str, header: list[str], body: list[list[str]], notes: list[str]
) -> str:
    align = ["---:", "---", *(["---:"] * (len(header) - 3)), "---"]
    table = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    table += ["| " + " | ".join(c if c else " " for c in line) + " |" for line in body]
    out = [*(f"{h}\n" for h in head), f"**{title}**\n", *table]
    return "\n".join(out) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def _text(
    head: Sequence[str], title: str, header: list[str], body: list[list[str]], notes: list[str]
) -> str:
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    last = len(header) - 1

    def aligned(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in (1, last) else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [*head, *([""] if head else []), title, aligned(header)]
    lines += ["  ".join("-" * w for w in widths), *(aligned(line) for line in body), ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def save_leaderboard(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
    *,
    metric: str = "AUROC",
) -> Path:
    """Write the Markdown leaderboard to ``out_dir/leaderboard.md``; return its path."""
    path = Path(out_dir) / LEADERBOARD_FILE
    path.write_text(leaderboard(rows, meta, metric=metric))
    return path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m uniad_plugin.benchmark.leaderboard",
        description="The leaderboard of a finished run, from its results.json (nothing is rerun).",
    )
    p.add_argument("results", help="a run's results.json, or the folder that holds it")
    p.add_argument(
        "--near-ood",
        nargs="+",
        metavar="NAME",
        help="OOD sets of the run that are near-OOD (default: the run's, meta.near_ood)",
    )
    p.add_argument("--metric", default="AUROC", choices=METRICS, help="default AUROC")
    p.add_argument("--format", default="markdown", choices=("markdown", "text"))
    p.add_argument("--out", metavar="FILE", help="write it to FILE instead of printing it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or write with ``--out``) the leaderboard of a ``results.json``.

    :return: exit status: 0, or 2 on a bad argument or file (one line on stderr)
    """
    args = _parser().parse_args(argv)
    path = Path(args.results)
    if path.is_dir():
        path = path / "results.json"
    try:
        data = json.loads(path.read_text())
        text = leaderboard(
            data["rows"],
            data.get("meta"),
            near_ood=args.near_ood,
            metric=args.metric,
            fmt=args.format,
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        message = " ".join(str(err).split())
        print(f"leaderboard: error: {path}: {message}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
