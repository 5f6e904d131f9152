"""OOD sets (kind ``"OOD"``): natural images from another distribution.

Two sets work offline, from files that ship with the installed packages:

- :func:`font_letters`: letters A-Z and a-z rendered from the TrueType fonts bundled with
  matplotlib (DejaVu, STIX, Computer Modern), white on black like MNIST;
- :func:`photo_patches`: random crops of the photos bundled with scikit-learn (and
  scikit-image, when it is installed).

:func:`~uniad_plugin.anomalies.real.load_ood` (module :mod:`.real`) loads the usual real OOD
sets through torchvision and pytorch-ood, converted to the classifier's input shape.

All generation is batched tensor code: glyphs are rasterised once per (font, letter) into a
cached bank and then placed with one batched affine warp; photo crops are cut and resized by
one :func:`torchvision.ops.roi_align` call per photo.

Every set lies on a value grid (``levels``, default 255: 8-bit values ``k / 255``, the grid of
the real OOD sets' files and of MNIST), like the ID images it is compared with; ``levels=None``
(continuous, name suffixed ``" (continuous)"``) is an explicit opt-in.

The offline generators draw from one of two disjoint sets of sources (``split``):
``"report"`` (the default, for the sets a benchmark reports) and ``"validation"`` (for tuning
detector defaults on anomalies that share no font or photo with the reported ones), see
:data:`FONT_SPLITS` and :data:`PHOTO_SPLITS`.
"""

from __future__ import annotations

import math
import string
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from uniad_plugin._utils import seeded_generator
from uniad_plugin.anomalies.base import (
    DEFAULT_LEVELS,
    AnomalySet,
    _check_levels,
    _check_n,
    _check_shape,
    grid_name,
    to_grid,
)

__all__ = ["OODSet", "FONT_SPLITS", "PHOTO_SPLITS", "SPLITS", "font_letters", "photo_patches"]

LETTERS: str = string.ascii_uppercase + string.ascii_lowercase

#: text fonts shipped with matplotlib (mpl-data/fonts/ttf) used by :func:`font_letters`
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
    "cmb10.ttf",
)

#: the two disjoint source splits of the offline OOD generators
SPLITS: tuple[str, ...] = ("report", "validation")

#: fonts of the ``"validation"`` split of :func:`font_letters`: one sans, one serif, one
#: mono, one italic and one bold face from the three families
_VALIDATION_FONTS: tuple[str, ...] = (
    "DejaVuSansMono.ttf",
    "DejaVuSerif-Bold.ttf",
    "STIXGeneralItalic.ttf",
    "cmss10.ttf",
    "cmb10.ttf",
)

#: :data:`FONT_FILES` split into two disjoint named subsets: ``"report"`` (16 fonts) and
#: ``"validation"`` (5 fonts)
FONT_SPLITS: dict[str, tuple[str, ...]] = {
    "report": tuple(f for f in FONT_FILES if f not in _VALIDATION_FONTS),
    "validation": _VALIDATION_FONTS,
}

#: luminance weights (ITU-R 601-2, as torchvision's ``rgb_to_grayscale`` and PIL's ``L``)
_LUMA = torch.tensor([0.299, 0.587, 0.114])

_CHUNK = 512


class OODSet(AnomalySet):
    """Natural images from another distribution (kind ``"OOD"``), all labelled ``-1``.

    :param x: images of shape :math:`(N, C, H, W)`
    :param name: short name (``"letters"``, ``"photos"``, ``"fashion_mnist"``, ...)
    :param info: JSON-serialisable details
    """

    def __init__(self, x: Tensor, name: str, info: dict[str, Any] | None = None):
        super().__init__(x, "OOD", name, info)


def _to_channels(x: Tensor, c: int) -> Tensor:
    """Convert images ``(N, C_in, H, W)`` with ``C_in`` in {1, 3} to ``c`` in {1, 3} channels."""
    c_in = x.shape[1]
    if c not in (1, 3):
        raise ValueError(f"expected shape with 1 (grayscale) or 3 (RGB) channels, got {c}")
    if c_in == c:
        return x
    if c_in == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c_in == 3:
        return torch.einsum("nchw,c->nhw", x, _LUMA.to(x)).unsqueeze(1)
    raise ValueError(f"cannot convert images with {c_in} channels to {c}")  # pragma: no cover


def _check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"expected split to be one of {SPLITS}, got {split!r}")
    return split


def _finish(x: Tensor, name: str, info: dict[str, Any], levels: int | None) -> OODSet:
    """Round onto the grid (values in [0, 1]), record it, label a continuous set."""
    x = to_grid(x, levels, (0.0, 1.0)).contiguous()
    return OODSet(x, grid_name(name, levels), info | {"grid_levels": levels})


# ----------------------------------------------------------------------------- font letters


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=8)
def _glyph_bank(size: int, font_files: tuple[str, ...]) -> tuple[Tensor, tuple[str, ...], str]:
    """Every letter of every available font of ``font_files``, tightly cropped, scaled so that its longer side
    fills a ``size`` x ``size`` canvas and centred; values in [0, 1].

    :return: bank of shape ``(n_fonts * 52, size, size)``, the font names, the letters
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font_dir = _font_dir()
    fonts = [f for f in font_files if (font_dir / f).is_file()]
    if not fonts:
        raise FileNotFoundError(f"no TrueType fonts of {font_files} found in {font_dir}")
    render = 2 * size
    inner = size - 2  # one black pixel of margin on each side
    glyphs = []
    for fname in fonts:
        font = ImageFont.truetype(str(font_dir / fname), render)
        for ch in LETTERS:
            img = Image.new("L", (3 * render, 3 * render))
            ImageDraw.Draw(img).text((render, render // 2), ch, font=font, fill=255)
            bbox = img.getbbox()
            if bbox is None:  # pragma: no cover - a font without this glyph
                raise ValueError(f"font {fname} renders no glyph for {ch!r}")
            img = img.crop(bbox)
            w, h = img.size
            k = inner / max(w, h)
            img = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.LANCZOS)
            canvas = Image.new("L", (size, size))
            canvas.paste(img, ((size - img.size[0]) // 2, (size - img.size[1]) // 2))
            glyphs.append(np.asarray(canvas, dtype=np.float32) / 255.0)
    bank = torch.from_numpy(np.stack(glyphs))
    return bank, tuple(f.removesuffix(".ttf") for f in fonts), LETTERS


def font_letters(
    n: int,
    shape: tuple[int, int, int],
    *,
    seed: int = 0,
    split: str = "report",
    levels: int | None = DEFAULT_LEVELS,
) -> OODSet:
    """``n`` letters (A-Z, a-z) rendered from the TrueType fonts that ship with matplotlib.

    White glyphs on a black background, like MNIST. Each sample draws, from a generator seeded
    with ``seed``: a font of the ``split`` (:data:`FONT_SPLITS`: 16 of 21 DejaVu/STIX/Computer
    Modern faces, regular, bold and italic variants, for ``"report"``; the other 5 for
    ``"validation"``) and a letter (uniform over the split's glyphs), a size (the
    glyph's longer side is 55-90% of the image's shorter side), a rotation (within
    :math:`\\pm 15` degrees) and an offset that keeps the glyph inside the image. The glyphs are
    rasterised once into a cached bank; placing them is one batched affine warp
    (:func:`torch.nn.functional.grid_sample`), rendered at an integer oversampling of the
    target size and box-filtered down (anti-aliased). Each image is scaled to a maximum of 1,
    then rounded onto the grid; values are in [0, 1], channels are replicated for RGB shapes.

    :param n: number of images
    :param shape: image shape :math:`(C, H, W)`, ``C`` in {1, 3}
    :param seed: seed of the generator; the same arguments always give the same images
    :param split: ``"report"`` (default) or ``"validation"``: disjoint sets of fonts
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :return: the set, named ``"letters"``; its attribute ``chars`` (a str of length ``n``)
        names the letter of each image
    :raises ValueError: on a non-positive ``n``, a bad ``shape``, ``split`` or ``levels``
    """
    n = _check_n(n)
    split, levels = _check_split(split), _check_levels(levels)
    c, h, w = _check_shape(shape)
    if c not in (1, 3):
        raise ValueError(f"expected shape with 1 (grayscale) or 3 (RGB) channels, got {shape}")
    gen = seeded_generator(seed)
    m = min(h, w)
    r = max(1, math.ceil(32 / m))  # oversampling factor: render at >= 32 px, then box-filter
    bank_size = 64 * max(1, math.ceil(m * r / 64))
    bank, fonts, letters = _glyph_bank(bank_size, FONT_SPLITS[split])

    glyph = torch.randint(len(bank), (n,), generator=gen)
    u = torch.rand(n, 4, generator=gen)
    scale = 0.55 + 0.35 * u[:, 0]  # glyph side / shorter image side
    angle = math.radians(15.0) * (2 * u[:, 1] - 1)
    # output coordinates in units of half the shorter side: x in [-w/m, w/m], y in [-h/m, h/m]
    half_w, half_h = w / m, h / m
    cos, sin = torch.cos(angle), torch.sin(angle)
    # half-extent of the rotated glyph square; the offset keeps it inside the image
    extent = scale * (cos.abs() + sin.abs())
    tx = (2 * u[:, 2] - 1) * (half_w - extent).clamp(min=0)
    ty = (2 * u[:, 3] - 1) * (half_h - extent).clamp(min=0)
    # affine_grid maps output coords (normalised per axis to [-1, 1]) to input coords:
    # p_in = R(-angle) (D p_out - t) / scale, with D = diag(w/m, h/m)
    rot_inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
    a = rot_inv / scale.view(-1, 1, 1)
    lin = a * torch.tensor([half_w, half_h]).view(1, 1, 2)
    off = -(a @ torch.stack([tx, ty], -1).unsqueeze(-1))
    theta = torch.cat([lin, off], -1)

    out = torch.empty(n, 1, h, w)
    for i in range(0, n, _CHUNK):
        sl = slice(i, i + _CHUNK)
        src = bank[glyph[sl]].unsqueeze(1)
        grid = F.affine_grid(theta[sl], [len(src), 1, h * r, w * r], align_corners=False)
        img = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out[sl] = F.avg_pool2d(img, r) if r > 1 else img
    peak = out.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    out = (out / peak).clamp_(0.0, 1.0)
    info = {"n": n, "shape": [c, h, w], "seed": seed, "split": split, "fonts": list(fonts)}
    info["letters"] = letters
    result = _finish(_to_channels(out, c), "letters", info, levels)
    result.chars = "".join(letters[int(g) % len(letters)] for g in glyph)
    return result


# ----------------------------------------------------------------------------- photo patches

#: scikit-image sample photos (``skimage.data.<name>()``) used when scikit-image is installed
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
)

#: photos of the ``"validation"`` split of :func:`photo_patches` (one of scikit-learn's, so
#: both splits work without scikit-image); every other photo belongs to ``"report"``
_VALIDATION_PHOTOS: tuple[str, ...] = ("flower", "rocket", "coins", "gravel")

#: the bundled photos (scikit-learn's ``china``/``flower`` and :data:`SKIMAGE_PHOTOS`) split
#: into two disjoint named subsets: ``"report"`` (8 photos) and ``"validation"`` (4 photos)
PHOTO_SPLITS: dict[str, tuple[str, ...]] = {
    "report": tuple(p for p in ("china", "flower", *SKIMAGE_PHOTOS) if p not in _VALIDATION_PHOTOS),
    "validation": _VALIDATION_PHOTOS,
}


@lru_cache(maxsize=1)
def _photos() -> tuple[tuple[Tensor, ...], tuple[str, ...]]:
    """The bundled photos as float tensors ``(3, h, w)`` in [0, 1] (gray ones replicated)."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    arrays = list(bunch.images)
    names = [Path(f).stem for f in bunch.filenames]
    try:
        import skimage.data
    except ImportError:  # scikit-image is optional
        pass
    else:
        for name in SKIMAGE_PHOTOS:
            arrays.append(getattr(skimage.data, name)())
            names.append(name)
    photos = []
    for arr in arrays:
        t = torch.tensor(np.asarray(arr, dtype=np.uint8)).float() / 255.0
        t = t.unsqueeze(0).expand(3, -1, -1) if t.dim() == 2 else t[..., :3].permute(2, 0, 1)
        photos.append(t.contiguous())
    return tuple(photos), tuple(names)


def photo_patches(
    n: int,
    shape: tuple[int, int, int],
    *,
    seed: int = 0,
    split: str = "report",
    levels: int | None = DEFAULT_LEVELS,
) -> OODSet:
    """``n`` random crops of natural photos, resized to ``shape``.

    The photos are those of the ``split`` (:data:`PHOTO_SPLITS`) among scikit-learn's two
    sample images (``china``, ``flower``) and, when scikit-image is installed, its sample photos
    :data:`SKIMAGE_PHOTOS` (``info["photos"]`` lists those used: the set depends on which
    packages are installed). Each sample draws a
    photo (uniformly), a crop with the aspect ratio of ``shape`` whose shorter side is 10-60%
    of the largest such crop, and a position inside the photo. Crops are resized with
    :func:`torchvision.ops.roi_align` (adaptive sampling, i.e. averaging: anti-aliased), one
    call per photo. RGB photos become grayscale for ``C = 1`` (luminance), gray photos are
    replicated for ``C = 3``; values are rounded onto the grid, in [0, 1].

    :param n: number of images
    :param shape: image shape :math:`(C, H, W)`, ``C`` in {1, 3}
    :param seed: seed of the generator; the same arguments always give the same images
    :param split: ``"report"`` (default) or ``"validation"``: disjoint sets of photos
    :param levels: value grid: values ``k / levels`` (default 255, 8-bit), ``None`` for
        continuous values (the name gets ``" (continuous)"``)
    :return: the set, named ``"photos"``
    :raises ValueError: on a non-positive ``n``, a bad ``shape``, ``split`` or ``levels``
    """
    from torchvision.ops import roi_align

    n = _check_n(n)
    split, levels = _check_split(split), _check_levels(levels)
    c, h, w = _check_shape(shape)
    if c not in (1, 3):
        raise ValueError(f"expected shape with 1 (grayscale) or 3 (RGB) channels, got {shape}")
    gen = seeded_generator(seed)
    photos, names = _photos()
    chosen = [i for i, name in enumerate(names) if name in PHOTO_SPLITS[split]]
    photos, names = tuple(photos[i] for i in chosen), tuple(names[i] for i in chosen)
    which = torch.randint(len(photos), (n,), generator=gen)
    u = torch.rand(n, 3, generator=gen)
    sizes = torch.tensor([[p.shape[1], p.shape[2]] for p in photos], dtype=torch.float32)
    ph, pw = sizes[which, 0], sizes[which, 1]
    # the largest crop with aspect w/h that fits, then 10-60% of it
    crop_h = torch.minimum(ph, pw * h / w) * (0.1 + 0.5 * u[:, 0])
    crop_w = crop_h * w / h
    x1 = u[:, 1] * (pw - crop_w)
    y1 = u[:, 2] * (ph - crop_h)
    boxes = torch.stack([x1, y1, x1 + crop_w, y1 + crop_h], 1)

    out = torch.empty(n, 3, h, w)
    for k, photo in enumerate(photos):
        idx = torch.nonzero(which == k).flatten()
        if len(idx) == 0:
            continue
        rois = torch.cat([torch.zeros(len(idx), 1), boxes[idx]], 1)
        out[idx] = roi_align(
            photo.unsqueeze(0), rois, output_size=(h, w), sampling_ratio=-1, aligned=True
        )
    out = _to_channels(out.clamp_(0.0, 1.0), c)
    info = {"n": n, "shape": [c, h, w], "seed": seed, "split": split, "photos": list(names)}
    return _finish(out, "photos", info, levels)
