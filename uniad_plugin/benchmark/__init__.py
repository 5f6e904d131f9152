"""One evaluation for out-of-distribution, adversarial and noise inputs.

:class:`UnifiedBenchmark` (:mod:`~uniad_plugin.benchmark.evaluation`) is a
:class:`pytorch_ood.benchmark.Benchmark` whose test sets are the ID test set combined with
anomaly sets of the three classes of the uniform framework (OOD: natural data from another
distribution, AD: adversarial examples, NS: noise); it scores every set once per detector and
reports pytorch-ood's metrics per set, per class and overall.

The modules of the package, one job each:

- :mod:`~uniad_plugin.benchmark.evaluation`: :class:`UnifiedBenchmark`, the metric rows,
  :func:`summarise`;
- :mod:`~uniad_plugin.benchmark.wiring`: detectors wired to a classifier by name
  (:func:`build_detectors`);
- :mod:`~uniad_plugin.benchmark.fitting`: fitting them on the same data (:func:`fit_detectors`);
- :mod:`~uniad_plugin.benchmark.reporting`: tables, CSV, JSON (:func:`save_results`);
- :mod:`~uniad_plugin.benchmark.leaderboard`: the detectors ranked, near- and far-OOD apart
  (imported from that module, which also runs as ``python -m``);
- :mod:`~uniad_plugin.benchmark.plots`: ROC curves and score histograms;
- :mod:`~uniad_plugin.benchmark.model_cache`: the user's model, the cached reference model;
- :mod:`~uniad_plugin.benchmark.anomaly_sets`: the anomaly sets of a run, by name;
- :mod:`~uniad_plugin.benchmark.config`: :class:`RunConfig`, one frozen value that describes a
  whole run, its profiles and its checks (:class:`ConfigError`);
- :mod:`~uniad_plugin.benchmark.sanity`: the model-free baselines (``PixelGrid``,
  ``PixelCount``, ``PixelKNN``) that sit beside every detector;
- :mod:`~uniad_plugin.benchmark.run`: the engine, :func:`run` (behind the ``uniad`` command).

A detector that cannot run on the model is *skipped* and one that raises while it is built,
fitted or scored is marked as *failed*; either way its row says why and the other detectors
complete. Every name is importable from :mod:`uniad_plugin.benchmark` itself.
"""

from uniad_plugin.benchmark._common import ConfigError
from uniad_plugin.benchmark.anomaly_sets import (
    DEFAULT_ATTACKS,
    NOISE_SETS,
    OFFLINE_OOD_SETS,
    adversarial_sets,
    build_anomaly_sets,
    load_ood_sets,
    noise_sets,
    parse_attacks,
)
from uniad_plugin.benchmark.config import (
    CIFAR10,
    CIFAR10_FAST,
    DIGITS,
    DIGITS_FAST,
    FOLDER,
    FOLDER_FAST,
    MNIST,
    MNIST_FAST,
    PROFILES,
    Profile,
    RunConfig,
    RunPlan,
)
from uniad_plugin.benchmark.evaluation import (
    DR_METRIC,
    ID_NAME,
    KINDS,
    METRICS,
    VAL_NAME,
    UnifiedBenchmark,
    detection_rate,
    flag_separable,
    summarise,
    threshold_at_fpr,
)
from uniad_plugin.benchmark.fitting import fit_detectors
from uniad_plugin.benchmark.model_cache import (
    build_model,
    check_model_output,
    default_cache_dir,
    load_model,
    place_state_dict,
    read_state_dict,
    trained_model,
)
from uniad_plugin.benchmark.plots import plot_heatmap, plot_histograms, plot_roc
from uniad_plugin.benchmark.reporting import (
    NEAR_CHANCE,
    accuracy_lines,
    results_to_csv,
    results_to_json,
    results_to_table,
    save_results,
)
from uniad_plugin.benchmark.run import (
    RunResult,
    Suite,
    prepare_suite,
    run,
    work_lines,
)
from uniad_plugin.benchmark.sanity import PixelCount, PixelGrid, PixelKNN
from uniad_plugin.benchmark.wiring import (
    DEFAULT_DETECTORS,
    SANITY_DETECTORS,
    DetectorEntry,
    ModelParts,
    PenultimateEncoder,
    available_detectors,
    build_detectors,
    check_detector_names,
)
from uniad_plugin.data import mnist_splits

__all__ = [
    "KINDS",
    "METRICS",
    "ID_NAME",
    "DEFAULT_DETECTORS",
    "DetectorEntry",
    "ModelParts",
    "PenultimateEncoder",
    "UnifiedBenchmark",
    "available_detectors",
    "build_detectors",
    "fit_detectors",
    "summarise",
    "results_to_table",
    "results_to_csv",
    "results_to_json",
    "save_results",
    "NEAR_CHANCE",
    "accuracy_lines",
    "work_lines",
    "plot_roc",
    "plot_histograms",
    "DEFAULT_ATTACKS",
    "NOISE_SETS",
    "OFFLINE_OOD_SETS",
    "check_detector_names",
    "default_cache_dir",
    "parse_attacks",
    "load_ood_sets",
    "build_model",
    "load_model",
    "place_state_dict",
    "read_state_dict",
    "check_model_output",
    "trained_model",
    "mnist_splits",
    "build_anomaly_sets",
    "RunResult",
    "ConfigError",
    "Profile",
    "PROFILES",
    "DIGITS",
    "DIGITS_FAST",
    "MNIST",
    "MNIST_FAST",
    "CIFAR10",
    "CIFAR10_FAST",
    "FOLDER",
    "FOLDER_FAST",
    "RunConfig",
    "RunPlan",
    "adversarial_sets",
    "noise_sets",
    "run",
    "DR_METRIC",
    "VAL_NAME",
    "SANITY_DETECTORS",
    "PixelCount",
    "PixelGrid",
    "PixelKNN",
    "Suite",
    "detection_rate",
    "flag_separable",
    "plot_heatmap",
    "prepare_suite",
    "threshold_at_fpr",
]
