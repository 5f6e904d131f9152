"""Constructor keyword arguments that keep each registered detector fast in the test suite.

A detector that registers in the ``pytorch_ood.detectors`` entry-point group joins the common
suite automatically; add an entry here only to shorten its training for the tests.
"""

FAST_KWARGS: dict[str, dict] = {
    "R2AD2": {"epochs": 5, "snapshot_epochs": 1},
    "A3": {"epochs": 3},
}

#: valid hyperparameter values (other than the defaults) that change each detector's scores;
#: the common suite sets them with pytorch-ood's ``set_hyperparameters`` and checks they act
VALID_SETTINGS: dict[str, dict] = {
    "UniformDetector": {"nu": 0.2, "rivals": 1},
    "A3": {"lr": 1e-3},
    "ConfoundingGradients": {"transform": "log1p"},
    "R2AD2": {"n_snapshots": 2},
}
