"""Saving and loading a fitted :class:`~uniad_plugin.detectors.uniform.UniformDetector`: its
state as tensors and primitives only, checked against the model on loading."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from typing_extensions import Self

from uniad_plugin.detectors._uniform_roles import rivals_in_effect, score_names
from uniad_plugin.nn.svdd import BatchedSVDD
from uniad_plugin.nn.taps import resolve_layers

__all__ = ["UniformState"]


class UniformState:
    """The ``state_dict`` / ``load_state_dict`` of UniformDetector (a mixin: it reads and sets
    the detector's fitted attributes and hyperparameters)."""

    def state_dict(self) -> dict[str, Any]:
        """Fitted state as tensors and primitives only (``torch.load(weights_only=True)`` safe)."""
        self._require_fitted()
        self._check_scores_as_fitted()
        return self._pack_state(
            {
                "layers": list(self.layers),
                "input_shape": list(self.input_shape) if self.input_shape is not None else None,
                "num_classes": self.num_classes,
                "in_dims": [s.in_dim for s in self.spheres],
                "fusion_mean": self.fusion_mean.detach().cpu(),
                "fusion_std": self.fusion_std.detach().cpu(),
                # None in states loaded from before the Fisher fusion (they fuse by z-scores)
                "fusion_knots": None if self.fusion_knots is None else self.fusion_knots.cpu(),
                "fusion_slope": None if self.fusion_slope is None else self.fusion_slope.cpu(),
                "score_names": list(self.fitted_scores[0]),
                "rivals_fitted": int(self.fitted_scores[1]),
                "spheres": [
                    {k: v.detach().cpu() for k, v in s.state_dict().items()} for s in self.spheres
                ],
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> Self:
        """Restore a state from :meth:`state_dict`, checked against this detector's model.

        :raises ValueError: if the state is malformed, from another version, or was fitted for a
            model with other layers, layer sizes or class count
        """
        hyper, state = self._unpack_state(state)
        try:
            layers = list(state["layers"])
            in_dims = [int(d) for d in state["in_dims"]]
            num_classes = int(state["num_classes"])
            input_shape = tuple(state["input_shape"]) if state["input_shape"] else None
            sphere_states = list(state["spheres"])
            fusion_mean, fusion_std = state["fusion_mean"], state["fusion_std"]
            # states written before the Fisher fusion hold no knots; they fuse by z-scores
            knots, slope = state.get("fusion_knots"), state.get("fusion_slope")
            pooling, hidden, rep_dim = (
                hyper.get("pooling", "avg"),
                hyper["hidden"],
                hyper["rep_dim"],
            )
        except (KeyError, TypeError) as e:
            raise ValueError(f"expected a complete UniformDetector state dict, missing {e}") from e
        if len(sphere_states) != len(layers) or len(in_dims) != len(layers):
            raise ValueError("corrupted UniformDetector state: layer counts disagree")
        device = self._target_device()
        if self.model is not None:
            resolve_layers(self.model, layers)  # raises ValueError for unknown layers
            if input_shape is not None:
                self._check_model(layers, pooling, input_shape, in_dims, num_classes)
        spheres = nn.ModuleList()
        for d, s in zip(in_dims, sphere_states):
            encoder = any(str(k).startswith("weights.") for k in s)
            sphere = BatchedSVDD(num_classes, d, hidden, rep_dim, encoder=encoder)
            try:
                sphere.load_state_dict(s)
            except RuntimeError as e:
                raise ValueError(f"corrupted UniformDetector state: {e}") from e
            spheres.append(sphere.to(device).eval().requires_grad_(False))
        hyper = {  # states saved before a hyperparameter existed load with the rule of their time
            "pooling": "avg",
            "whiten": "full",
            "fusion": "zsum",
            "encoder_free": (),
            "rivals": 0,
            **hyper,
        }
        fitted = self._fitted_scores_of(state, hyper, layers, num_classes)
        if hyper["fusion"] == "fisher" and (knots is None or slope is None):
            raise ValueError("corrupted UniformDetector state: fusion 'fisher' without knots")
        before = {name: getattr(self, name) for name in self.hyperparameters}
        try:
            self._restore_hyperparameters(hyper)
        except (TypeError, ValueError):
            for name, value in before.items():
                setattr(self, name, value)
            raise
        self.layers = layers
        self.spheres = spheres
        self.num_classes = num_classes
        self.fitted_scores = fitted
        self.input_shape = input_shape
        self.fusion_mean = fusion_mean.to(device)
        self.fusion_std = fusion_std.to(device)
        self.fusion_knots = None if knots is None else knots.to(device)
        self.fusion_slope = None if slope is None else slope.to(device)
        return self

    @staticmethod
    def _fitted_scores_of(state, hyper, layers, num_classes) -> tuple[list[str], int]:
        """The fused scores and rivals of a state, checked against its hyperparameters and the
        widths of its held-out statistics (states saved before the rival contrasts fused the
        layers' scores only)."""
        contrast, rivals = hyper.get("contrast"), int(hyper["rivals"])
        try:
            expected = score_names(layers, contrast, rivals, num_classes)
            in_effect = rivals_in_effect(layers, contrast, rivals, num_classes)
        except ValueError as e:
            raise ValueError(f"corrupted UniformDetector state: {e}") from e
        names = list(state.get("score_names", layers))
        fitted_rivals = int(state.get("rivals_fitted", 0))
        keys = ("fusion_mean", "fusion_std", "fusion_knots", "fusion_slope")
        stats = [state.get(k) for k in keys]
        widths = [int(t.shape[0]) for t in stats if t is not None]
        if names != expected or fitted_rivals != in_effect or any(w != len(names) for w in widths):
            raise ValueError(
                f"corrupted UniformDetector state: fused scores {names} with {fitted_rivals} "
                f"rivals and statistics of widths {widths}, expected {expected} with "
                f"{in_effect} rivals"
            )
        return names, fitted_rivals

    def _check_model(self, layers, pooling, input_shape, in_dims, num_classes) -> None:
        """Refuse a state whose layers this model lacks or has with other sizes."""
        saved = self.layers, self.pooling
        self.layers, self.pooling = layers, pooling
        probe = torch.zeros((1, *input_shape), device=self._target_device())
        try:
            feats, logits = self.extract(probe.to(self._model_dtype()))
        except Exception as e:
            raise ValueError(
                f"the state was fitted for inputs of shape {input_shape}, which this "
                f"model cannot process: {e}"
            ) from e
        finally:  # the probe changes nothing of the detector, whatever the state holds
            self.layers, self.pooling = saved
        got = [f.shape[1] for f in feats]
        if got != in_dims or logits.shape[1] != num_classes:
            raise ValueError(
                f"the state was fitted for a model with layer sizes {in_dims} and "
                f"{num_classes} classes, this model has {got} and {logits.shape[1]}"
            )
