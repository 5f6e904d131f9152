"""Which of UniformDetector's tapped layers play which role: spheres without an encoder
(``encoder_free``) and rival contrasts (``contrast``, ``rivals``)."""

from __future__ import annotations

__all__ = ["UniformRoles"]


class UniformRoles:
    """The layer roles of UniformDetector (a mixin: it reads the detector's ``layers``,
    ``num_classes`` and hyperparameters)."""

    def _contrast_layers(self) -> list[int]:
        """Indices of the layers with a rival contrast (see ``contrast`` and ``rivals``)."""
        layers = list(self.layers or ())
        if self.contrast is None:
            names = [name for name in layers if name not in ("log_softmax", "softmax")]
        else:
            names = list(self.contrast)
            unknown = [name for name in names if name not in layers]
            if unknown:
                raise ValueError(
                    f"expected contrast to name tapped layers ({layers}), got {unknown}"
                )
        if self.rivals == 0:
            return []
        return [i for i, name in enumerate(layers) if name in names]

    def _rivals_in_effect(self, num_classes: int) -> int:
        """The rivals searched per row: ``min(rivals, K - 1)``, 0 without contrast layers."""
        return min(self.rivals, num_classes - 1) if self._contrast_layers() else 0

    @property
    def score_names(self) -> list[str]:
        """The names of the columns of :meth:`layer_scores`: every layer, then
        ``"contrast:<layer>"`` for every contrasted layer."""
        layers = list(self.layers or ())
        if self.num_classes is not None and self._rivals_in_effect(self.num_classes) == 0:
            return layers
        return layers + [f"contrast:{layers[i]}" for i in self._contrast_layers()]

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
