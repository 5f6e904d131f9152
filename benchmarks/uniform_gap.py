"""Where UniformDetector stands against the best built-in detector, set by set, in a ``uniad`` run.

Reads the ``results.json`` a run wrote and writes ``GAP.md`` beside it: per set, UniformDetector's
AUROC, the best built-in detector's and the gap (the project's goal: no set more than 0.02
behind, the worst set of every class at least 0.95, the overall mean above every built-in),
with the sets a model-free ``Pixel*`` baseline separates marked.

    python benchmarks/uniform_gap.py benchmarks/results/mnist
    python benchmarks/uniform_gap.py benchmarks/results/mnist_resnet
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from uniad_plugin.benchmark import SANITY_DETECTORS

OURS = "UniformDetector"
PLUGINS = {"UniformDetector", "A3", "ConfoundingGradients", "R2AD2"}
#: the project's goal
MAX_GAP = 0.02
MIN_WORST = 0.95


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="folder of a uniad run (holds results.json)")
    args = ap.parse_args(argv)
    run = Path(args.run)
    rows = json.loads((run / "results.json").read_text())["rows"]
    sets = [r for r in rows if r["Detector"] == OURS and r["Dataset"] not in ("mean", "worst")]
    sets = [r for r in sets if r.get("Error") is None and r["Class"] != "all"]
    builtin = [
        r
        for r in rows
        if r["Detector"] not in PLUGINS
        and r["Detector"] not in SANITY_DETECTORS
        and r.get("Error") is None
    ]
    lines = [
        f"Produced by `python benchmarks/uniform_gap.py {shlex.join(sys.argv[1:] if argv is None else argv)}`"
        " from this run's `results.json`. Gap: UniformDetector's AUROC minus the best built-in's",
        f"on the same set (goal of issue 12: at least -{MAX_GAP}); `!`: a model-free Pixel*",
        "baseline separates the set (AUROC >= 0.9).",
        "",
        "| class | set | UniformDetector | best built-in | gap |",
        "|---|---|---|---|---|",
    ]
    gaps, worst = {}, {}
    for r in sets:
        others = [b for b in builtin if b["Dataset"] == r["Dataset"] and b["Class"] == r["Class"]]
        best = max(others, key=lambda b: b["AUROC"])
        gap = r["AUROC"] - best["AUROC"]
        gaps[r["Dataset"]] = gap
        if r["Class"] not in worst or r["AUROC"] < worst[r["Class"]][1]:
            worst[r["Class"]] = (r["Dataset"], r["AUROC"])
        mark = " !" if r.get("PixelSeparable") else ""
        lines.append(
            f"| {r['Class']} | {r['Dataset']}{mark} | {r['AUROC']:.3f} | "
            f"{best['AUROC']:.3f} ({best['Detector']}) | {gap:+.3f} |"
        )
    means = {
        r["Detector"]: r["AUROC"]
        for r in rows
        if r["Dataset"] == "mean" and r["Class"] == "all" and r.get("AUROC") is not None
    }
    best_mean = max((v, d) for d, v in means.items() if d not in PLUGINS | set(SANITY_DETECTORS))
    behind = {n: g for n, g in gaps.items() if g < -MAX_GAP}
    low = {k: v for k, v in worst.items() if v[1] < MIN_WORST}
    lines += [
        "",
        f"- Sets more than {MAX_GAP} behind the best built-in: "
        + (", ".join(f"`{n}` ({g:+.3f})" for n, g in behind.items()) or "none")
        + ".",
        f"- Worst set per class (goal >= {MIN_WORST}): "
        + ", ".join(f"{k} `{n}` {a:.3f}" for k, (n, a) in worst.items())
        + (" (below the goal: " + ", ".join(low) + ")" if low else "")
        + ".",
        f"- Overall mean: UniformDetector {means.get(OURS, float('nan')):.3f}, best built-in "
        f"{best_mean[1]} {best_mean[0]:.3f}.",
        f"- Goal of issue 12 {'met' if not behind and not low and means.get(OURS, 0) > best_mean[0] else 'not met'} on this run.",
    ]
    (run / "GAP.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
