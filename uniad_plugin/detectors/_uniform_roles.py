"""Which of UniformDetector's tapped layers play which role: spheres without an encoder
(``encoder_free``) and rival contrasts (``contrast``, ``rivals``)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["UniformRoles", "contrast_indices", "rivals_in_effect", "score_names"]

#: the output layers, which get no rival contrast by default
OUTPUTS = ("log_softmax", "softmax")


def contrast_indices(
    layers: Sequence[str], contrast: Sequence[str] | None, rivals: int
) -> list[int]:
    """Indices of the layers with a rival contrast: ``contrast`` (``None``: every layer but
    the outputs), none if ``rivals == 0``. Unknown names raise a ``ValueError``."""
    layers = list(layers)
    if contrast is None:
        names = [name for name in layers if name not in OUTPUTS]
    else:
        names = list(contrast)
        unknown = [name for name in names if name not in layers]
        if unknown:
            raise ValueError(f"expected contrast to name tapped layers ({layers}), got {unknown}")
    if rivals == 0:
        return []
    return [i for i, name in enumerate(layers) if name in names]


def rivals_in_effect(
    layers: Sequence[str], contrast: Sequence[str] | None, rivals: int, num_classes: int
) -> int:
    """The rivals searched per row: ``min(rivals, K - 1)``, 0 without contrast layers."""
    return min(rivals, num_classes - 1) if contrast_indices(layers, contrast, rivals) else 0


def score_names(
    layers: Sequence[str], contrast: Sequence[str] | None, rivals: int, num_classes: int | None
) -> list[str]:
    """The fused scores: every layer, then ``"contrast:<layer>"`` for every contrasted one."""
    layers = list(layers)
    if num_classes is not None and rivals_in_effect(layers, contrast, rivals, num_classes) == 0:
        return layers
    return layers + [f"contrast:{layers[i]}" for i in contrast_indices(layers, contrast, rivals)]


class UniformRoles:
    """The layer roles of UniformDetector (a mixin: it reads the detector's ``layers``,
    ``num_classes`` and hyperparameters)."""

    def _contrast_layers(self) -> list[int]:
        """Indices of the layers with a rival contrast (see ``contrast`` and ``rivals``)."""
        return contrast_indices(self.layers or (), self.contrast, self.rivals)

    def _rivals_in_effect(self, num_classes: int) -> int:
        """The rivals searched per row: ``min(rivals, K - 1)``, 0 without contrast layers."""
        return rivals_in_effect(self.layers or (), self.contrast, self.rivals, num_classes)

    @property
    def score_names(self) -> list[str]:
        """The names of the columns of :meth:`layer_scores`: every layer, then
        ``"contrast:<layer>"`` for every contrasted layer."""
        return score_names(self.layers or (), self.contrast, self.rivals, self.num_classes)

    def _check_scores_as_fitted(self) -> None:
        """Refuse scores whose held-out statistics were fitted for other contrasts or rivals."""
        now = (self.score_names, self._rivals_in_effect(self.num_classes))
        if self.fitted_scores is not None and now != self.fitted_scores:
            raise ValueError(
                f"expected the scores fitted ({self.fitted_scores[0]}, "
                f"{self.fitted_scores[1]} rivals), got {now[0]}, {now[1]} rivals: contrast or "
                "rivals changed after the fit; refit"
            )

    def _encoder_free(self) -> tuple[str, ...]:
        """The names of the layers whose spheres have no encoder (see ``encoder_free``)."""
        layers = list(self.layers or ())
        if self.encoder_free is None:
            return tuple(name for name in layers if name == "softmax")
        unknown = [name for name in self.encoder_free if name not in layers]
        if unknown:
            raise ValueError(
                f"expected encoder_free to name tapped layers ({layers}), got {unknown}"
            )
        return tuple(self.encoder_free)
