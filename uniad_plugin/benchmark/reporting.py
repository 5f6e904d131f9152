"""Result rows as tables (text, Markdown), CSV and JSON, and the files of a run."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from uniad_plugin.benchmark.evaluation import (
    ALL,
    DR_METRIC,
    GROUPS,
    KINDS,
    LOWER_IS_BETTER,
    MEAN,
    METRICS,
    SUMMARY_SETS,
    WORST,
    group_mean,
)

__all__ = [
    "NEAR_CHANCE",
    "accuracy_lines",
    "results_notes",
    "results_to_csv",
    "results_to_json",
    "results_to_table",
    "save_results",
]

#: the mark of a set that a model-free ``Pixel*`` baseline separates, and its legend
SEPARABLE_MARK = "!"
_LEGEND = (
    f"{SEPARABLE_MARK} = a model-free Pixel* baseline separates this set from the ID test set "
    "(AUROC >= 0.9): a detector needs no model to score well on it"
)


#: a classifier whose accuracy on the ID test images is below this multiple of chance
#: (1 / the number of classes) gets a warning: it is near chance
NEAR_CHANCE: float = 1.5


def accuracy_lines(meta: Mapping[str, Any]) -> list[str]:
    """The classifier's accuracy on the ID test images (``meta["test_accuracy"]``, of
    ``meta["n_test"]`` images and ``meta["num_classes"]`` classes) in one line, and a warning
    when it is below :data:`NEAR_CHANCE` times chance (a wrong input normalisation or label
    order); none if ``meta`` has no accuracy."""
    acc, classes = meta.get("test_accuracy"), meta.get("num_classes")
    if acc is None or not classes:
        return []
    chance = 1.0 / classes
    n = meta.get("n_test")
    images = f"the {n:,} ID test images" if n else "the ID test images"
    lines = [
        f"Classifier accuracy on {images}: {acc:.3f} (chance {chance:.3f}, {classes} classes)."
    ]
    if acc < NEAR_CHANCE * chance:
        lines.append(
            f"Warning: the accuracy is near chance (below {NEAR_CHANCE:g} x {chance:.3f}), so "
            "the model does not classify these images: check the input normalisation (the "
            "model gets images in [0, 1]; wrap a model trained on normalised inputs in "
            "uniad_plugin.models.Normalized(model, mean, std)) and the label order (folder "
            "data: class k is the k-th folder name in sorted order, as torchvision's "
            "ImageFolder numbers them)."
        )
    return lines


def _detectors_in(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["Detector"] for r in rows))


def _fmt(value: float) -> str:
    return (
        "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


def results_to_table(
    rows: Sequence[Mapping[str, Any]], metric: str = "AUROC", *, fmt: str = "text"
) -> str:
    """One metric as a table: a line per anomaly set, class mean and worst set, overall mean
    and worst set, a column per detector; detectors without numbers are listed below with the
    reason. Sets that a model-free ``Pixel*`` baseline separates are marked ``!``.

    :param rows: rows from :meth:`UnifiedBenchmark.evaluate`
    :param metric: one of :data:`METRICS`
    :param fmt: ``"text"`` (aligned columns for a terminal) or ``"markdown"``
    :raises ValueError: on an unknown metric or format
    """
    if metric not in METRICS:
        raise ValueError(f"expected metric in {METRICS}, got {metric!r}")
    if fmt not in ("text", "markdown"):
        raise ValueError(f"expected fmt 'text' or 'markdown', got {fmt!r}")
    detectors = _detectors_in(rows)
    index = {(r["Detector"], r["Class"], r["Dataset"]): r for r in rows}
    evaluated = [d for d in detectors if any(k[0] == d and k[2] not in SUMMARY_SETS for k in index)]
    header = ["Class", "Dataset", "N", *evaluated]
    flagged = {r["Dataset"] for r in rows if r.get("PixelSeparable")}
    body = [
        _table_line(index, evaluated, key, metric, flagged) for key in _table_keys(rows, evaluated)
    ]
    title = _title(metric)
    notes = _table_notes(rows, detectors, evaluated)
    legend = [_LEGEND] if flagged else []
    if fmt == "markdown":
        return _markdown(title, header, body, legend + notes)
    return _text(title, header, body, notes, legend)


def _title(metric: str) -> str:
    if metric == DR_METRIC:
        return (
            f"{metric}: share of each anomaly set detected at 5% FPR (threshold chosen on "
            "held-out ID data, not on the ID test set)"
        )
    lower = " (lower is better)" if metric in LOWER_IS_BETTER else ""
    return f"{metric}{lower}: ID test set vs each anomaly set"


def _table_keys(
    rows: Sequence[Mapping[str, Any]], evaluated: Sequence[str]
) -> list[tuple[str, str]]:
    """``(class, set)`` of every table line: the sets, the group means (near-/far-OOD, where
    there are), mean and worst set of each class, then overall."""
    present = {(r["Class"], r["Dataset"]) for r in rows}
    keys: list[tuple[str, str]] = []
    for kind in KINDS:
        sets = list(
            dict.fromkeys(
                r["Dataset"]
                for r in rows
                if r["Class"] == kind and r["Dataset"] not in SUMMARY_SETS
            )
        )
        keys.extend((kind, s) for s in sets)
        keys.extend(k for k in ((kind, group_mean(g, kind)) for g in GROUPS) if k in present)
        if sets:
            keys.extend([(kind, MEAN), (kind, WORST)])
    if evaluated:
        keys.extend([(ALL, MEAN), (ALL, WORST)])
    # rows summarised before worst rows existed have none: show a worst line only where it is
    return [k for k in keys if k[1] != WORST or k in present]


def _table_line(
    index: Mapping[tuple[str, str, str], Mapping[str, Any]],
    evaluated: Sequence[str],
    key: tuple[str, str],
    metric: str,
    flagged: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[str]:
    """The cells of one table line: class, set, N and the metric of every detector."""
    kind, name = key
    ns = [index[(d, kind, name)]["N"] for d in evaluated if (d, kind, name) in index]
    summary = name in SUMMARY_SETS
    label = f"{name} {SEPARABLE_MARK}" if name in flagged and not summary else name
    line = [kind, label, str(max(ns)) if ns and not summary else ""]
    for d in evaluated:
        r = index.get((d, kind, name))
        if r is None:
            line.append("")
        elif r["Error"] is not None and not summary:
            line.append("err" if r["Error"] != "empty set" else "empty")
        else:
            line.append(_fmt(r[metric]))
    return line


def _table_notes(
    rows: Sequence[Mapping[str, Any]], detectors: Sequence[str], evaluated: Sequence[str]
) -> list[str]:
    """Why a detector or a set has no numbers, one note each."""
    notes = []
    for d in detectors:
        for r in rows:
            if r["Detector"] == d and r["Error"] is not None and r["Error"] != "empty set":
                where = "" if r["Dataset"] == MEAN and r["Class"] == ALL else f" [{r['Dataset']}]"
                if d not in evaluated or r["Dataset"] not in SUMMARY_SETS:
                    notes.append(f"{d}{where}: {r['Error']}")
    return notes


def _markdown(title: str, header: list[str], body: list[list[str]], notes: list[str]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(c if c else " " for c in line) + " |" for line in body]
    out = "\n".join([f"**{title}**", "", *lines])
    if notes:
        out += "\n\n" + "\n".join(f"- {n}" for n in notes)
    return out + "\n"


def _text(
    title: str,
    header: list[str],
    body: list[list[str]],
    notes: list[str],
    legend: Sequence[str] = (),
) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=True)]

    def aligned(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [title, aligned(header), "  ".join("-" * w for w in widths)]
    lines.extend(aligned(line) for line in body)
    lines.extend(legend)
    if notes:
        lines.append("")
        lines.append("Not evaluated / errors:")
        lines.extend(f"  {n}" for n in notes)
    return "\n".join(lines) + "\n"


def results_to_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as CSV (one line per row; missing numbers are empty cells)."""
    buf = io.StringIO()
    fields = ["Detector", "Class", "Dataset", *METRICS, "N", "PixelSeparable", "Error"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v)
                for k, v in r.items()
            }
        )
    return buf.getvalue()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    return value


def results_to_json(
    rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
) -> str:
    """The rows (and run details ``meta``) as JSON; missing numbers are ``null``."""
    return json.dumps(_jsonable({"meta": dict(meta or {}), "rows": list(rows)}), indent=2)


def save_results(
    rows: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``results.json``, ``results.csv``, ``table.txt``, ``table.md``, ``notes.md``
    (the run's notes in plain words, see :func:`results_notes`) and ``leaderboard.md`` (the
    detectors ranked, see :mod:`~uniad_plugin.benchmark.leaderboard`; AUROC, near-OOD sets
    ``meta["near_ood"]``) to ``out_dir``; the tables start with the classifier's accuracy (see
    :func:`accuracy_lines`).

    :return: file kind -> path
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "table": out / "table.txt",
        "markdown": out / "table.md",
        "notes": out / "notes.md",
    }
    head = "".join(f"{line}\n\n" for line in accuracy_lines(meta or {}))
    files["json"].write_text(results_to_json(rows, meta) + "\n")
    files["csv"].write_text(results_to_csv(rows))
    files["table"].write_text(head + "\n".join(results_to_table(rows, m) for m in METRICS))
    files["markdown"].write_text(
        head + "\n".join(results_to_table(rows, m, fmt="markdown") for m in METRICS)
    )
    files["notes"].write_text("".join(f"- {n}\n" for n in results_notes(meta or {})))
    from uniad_plugin.benchmark.leaderboard import save_leaderboard  # it imports this module

    files["leaderboard"] = save_leaderboard(rows, out, meta)
    return files


def results_notes(meta: Mapping[str, Any]) -> list[str]:
    """What a reader of a run's tables must know, in plain words: the classifier's accuracy on
    the ID test images (see :func:`accuracy_lines`), the value grid of the generated sets, the sets a model-free baseline separates, the run's notes (e.g. real OOD
    data that is missing) and the false positive rate each detector's held-out threshold gives
    on the ID test set."""
    out = accuracy_lines(meta)
    if "grid_levels" in meta:
        levels = meta["grid_levels"]
        out.append(
            f"Every generated anomaly set lies on the ID data's value grid (k/{levels})."
            if levels
            else "The generated anomaly sets are continuous (off the ID data's value grid; "
            "labelled '(continuous)'): a pixel counter separates them."
        )
    separable = meta.get("pixel_separable")
    if separable:
        out.append(
            f"Marked {SEPARABLE_MARK}: a model-free Pixel* baseline separates these sets from the "
            f"ID test set with AUROC >= 0.9, so they say little about a detector: "
            f"{', '.join(separable)}."
        )
    elif separable is not None:
        out.append("No set is separated by a model-free Pixel* baseline (AUROC >= 0.9).")
    out.extend(str(n) for n in meta.get("notes", []))
    thresholds = meta.get("thresholds") or {}
    if thresholds:
        fprs = ", ".join(f"{d} {t['id_test_fpr']:.3f}" for d, t in thresholds.items())
        out.append(
            f"{DR_METRIC}: thresholds chosen on {meta.get('n_val', 'the')} held-out ID images; "
            f"the share of the ID test set they flag (nominal 0.05): {fprs}."
        )
    return out
