"""OOD sets (kind ``"OOD"``): natural images from another distribution.

Two sets work offline, from files that ship with the installed packages:

- :func:`font_letters`: letters A-Z and a-z rendered from the TrueType fonts bundled with
  matplotlib (DejaVu, STIX, Computer Modern), white on black like MNIST;
- :func:`photo_patches`: random crops of the photos bundled with scikit-learn (and
  scikit-image, when it is installed).

:func:`load_ood` loads the usual real OOD sets through torchvision and pytorch-ood
(:data:`OOD_DATASETS`), converted to the classifier's input shape.

All generation is batched tensor code: glyphs are rasterised once per (font, letter) into a
cached bank and then placed with one batched affine warp; photo crops are cut and resized by
one :func:`torchvision.ops.roi_align` call per photo.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from uniad_plugin.anomalies.base import AnomalySet, _check_n, _check_shape

__all__ = ["OODSet", "OOD_DATASETS", "font_letters", "photo_patches", "load_ood"]

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


def _seed_generator(seed: int) -> torch.Generator:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"expected seed to be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- font letters


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=4)
def _glyph_bank(size: int) -> tuple[Tensor, tuple[str, ...], str]:
    """Every letter of every available font, tightly cropped, scaled so that its longer side
    fills a ``size`` x ``size`` canvas and centred; values in [0, 1].

    :return: bank of shape ``(n_fonts * 52, size, size)``, the font names, the letters
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font_dir = _font_dir()
    fonts = [f for f in FONT_FILES if (font_dir / f).is_file()]
    if not fonts:
        raise FileNotFoundError(f"no TrueType fonts of {FONT_FILES} found in {font_dir}")
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


def font_letters(n: int, shape: tuple[int, int, int], *, seed: int = 0) -> OODSet:
    """``n`` letters (A-Z, a-z) rendered from the TrueType fonts that ship with matplotlib.

    White glyphs on a black background, like MNIST. Each sample draws, from a generator seeded
    with ``seed``: a font (21 DejaVu/STIX/Computer Modern faces, regular, bold and italic
    variants) and a letter (uniform over the :math:`21 \\times 52` glyphs), a size (the
    glyph's longer side is 55-90% of the image's shorter side), a rotation (within
    :math:`\\pm 15` degrees) and an offset that keeps the glyph inside the image. The glyphs are
    rasterised once into a cached bank; placing them is one batched affine warp
    (:func:`torch.nn.functional.grid_sample`), rendered at an integer oversampling of the
    target size and box-filtered down (anti-aliased). Each image is scaled to a maximum of 1;
    values are in [0, 1], channels are replicated for RGB shapes.

    :param n: number of images
    :param shape: image shape :math:`(C, H, W)`, ``C`` in {1, 3}
    :param seed: seed of the generator; the same arguments always give the same images
    :return: the set, named ``"letters"``; its attribute ``chars`` (a str of length ``n``)
        names the letter of each image
    :raises ValueError: on a non-positive ``n`` or a bad ``shape``
    """
    n = _check_n(n)
    c, h, w = _check_shape(shape)
    if c not in (1, 3):
        raise ValueError(f"expected shape with 1 (grayscale) or 3 (RGB) channels, got {shape}")
    gen = _seed_generator(seed)
    m = min(h, w)
    r = max(1, math.ceil(32 / m))  # oversampling factor: render at >= 32 px, then box-filter
    bank_size = 64 * max(1, math.ceil(m * r / 64))
    bank, fonts, letters = _glyph_bank(bank_size)

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
    info = {"n": n, "shape": [c, h, w], "seed": seed, "fonts": list(fonts), "letters": letters}
    result = OODSet(_to_channels(out, c), "letters", info)
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


def photo_patches(n: int, shape: tuple[int, int, int], *, seed: int = 0) -> OODSet:
    """``n`` random crops of natural photos, resized to ``shape``.

    The photos are scikit-learn's two sample images (``china``, ``flower``) and, when
    scikit-image is installed, its sample photos :data:`SKIMAGE_PHOTOS` (``info["photos"]``
    lists those used: the set depends on which packages are installed). Each sample draws a
    photo (uniformly), a crop with the aspect ratio of ``shape`` whose shorter side is 10-60%
    of the largest such crop, and a position inside the photo. Crops are resized with
    :func:`torchvision.ops.roi_align` (adaptive sampling, i.e. averaging: anti-aliased), one
    call per photo. RGB photos become grayscale for ``C = 1`` (luminance), gray photos are
    replicated for ``C = 3``; values are in [0, 1].

    :param n: number of images
    :param shape: image shape :math:`(C, H, W)`, ``C`` in {1, 3}
    :param seed: seed of the generator; the same arguments always give the same images
    :return: the set, named ``"photos"``
    :raises ValueError: on a non-positive ``n`` or a bad ``shape``
    """
    from torchvision.ops import roi_align

    n = _check_n(n)
    c, h, w = _check_shape(shape)
    if c not in (1, 3):
        raise ValueError(f"expected shape with 1 (grayscale) or 3 (RGB) channels, got {shape}")
    gen = _seed_generator(seed)
    photos, names = _photos()
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
    info = {"n": n, "shape": [c, h, w], "seed": seed, "photos": list(names)}
    return OODSet(out, "photos", info)


# ----------------------------------------------------------------------------- real datasets


@dataclass(frozen=True)
class OODSource:
    """A real OOD data set that :func:`load_ood` can load (its test split).

    :param description: what it is and where it comes from
    :param expected: the files the loader needs under ``root`` (for the error message)
    :param load: ``(root, download) -> images`` as a uint8 tensor :math:`(N, C, h, w)`, or a
        dataset of PIL images for sets of differently sized images
    """

    description: str
    expected: Callable[[Path], list[Path]]
    load: Callable[[Path, bool], Any]


_IDX = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


def _mnist_like(cls_name: str) -> OODSource:
    def expected(root: Path) -> list[Path]:
        return [root / cls_name / "raw" / f for f in _IDX]

    def load(root: Path, download: bool) -> Tensor:
        import torchvision.datasets as tvd

        ds = getattr(tvd, cls_name)(root=str(root), train=False, download=download)
        return ds.data.unsqueeze(1)

    return OODSource(f"torchvision.datasets.{cls_name}, test split", expected, load)


def _emnist_expected(root: Path) -> list[Path]:
    raw = root / "EMNIST" / "raw"
    return [raw / f"emnist-letters-test-{k}-ubyte" for k in ("images-idx3", "labels-idx1")]


def _emnist_load(root: Path, download: bool) -> Tensor:
    from torchvision.datasets import EMNIST

    ds = EMNIST(root=str(root), split="letters", train=False, download=download)
    # EMNIST's IDX files store images transposed; torchvision does not undo it
    return ds.data.transpose(1, 2).unsqueeze(1)


def _cifar10_expected(root: Path) -> list[Path]:
    from torchvision.datasets import CIFAR10

    files = [f for f, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    return [root / CIFAR10.base_folder / f for f in files]


def _cifar10_load(root: Path, download: bool) -> Tensor:
    from torchvision.datasets import CIFAR10

    ds = CIFAR10(root=str(root), train=False, download=download)
    return torch.from_numpy(ds.data).permute(0, 3, 1, 2)


def _svhn_expected(root: Path) -> list[Path]:
    return [root / "test_32x32.mat"]


def _svhn_load(root: Path, download: bool) -> Tensor:
    from torchvision.datasets import SVHN

    ds = SVHN(root=str(root), split="test", download=download)
    return torch.from_numpy(ds.data)


def _textures_expected(root: Path) -> list[Path]:
    from pytorch_ood.dataset.img import Textures

    return [root / Textures.filename, root / Textures.base_folder]


def _textures_load(root: Path, download: bool) -> Any:
    from pytorch_ood.dataset.img import Textures

    return Textures(root=str(root), download=download)


#: the real OOD sets of :func:`load_ood`, by name
OOD_DATASETS: dict[str, OODSource] = {
    "fashion_mnist": _mnist_like("FashionMNIST"),
    "kmnist": _mnist_like("KMNIST"),
    "emnist_letters": OODSource(
        "torchvision.datasets.EMNIST(split='letters'), test split, transposed upright",
        _emnist_expected,
        _emnist_load,
    ),
    "cifar10": OODSource(
        "torchvision.datasets.CIFAR10, test split", _cifar10_expected, _cifar10_load
    ),
    "svhn": OODSource("torchvision.datasets.SVHN, test split", _svhn_expected, _svhn_load),
    "textures": OODSource(
        "pytorch_ood.dataset.img.Textures (DTD), all images", _textures_expected, _textures_load
    ),
}


def _crop_box(h_in: int, w_in: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Largest centred box (top, left, height, width) of aspect ``w / h`` inside the input."""
    if w_in * h > h_in * w:  # input wider than target
        cw, ch = max(1, round(h_in * w / h)), h_in
    else:
        cw, ch = w_in, max(1, round(w_in * h / w))
    return (h_in - ch) // 2, (w_in - cw) // 2, ch, cw


def _resize_uint8(data: Tensor, h: int, w: int) -> Tensor:
    """Batched: centre-crop to the target aspect, resize (bilinear, anti-aliased) to [0, 1]."""
    top, left, ch, cw = _crop_box(data.shape[2], data.shape[3], h, w)
    out = torch.empty(len(data), data.shape[1], h, w)
    for i in range(0, len(data), _CHUNK):
        x = data[i : i + _CHUNK, :, top : top + ch, left : left + cw].float() / 255.0
        if (ch, cw) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + _CHUNK] = x
    return out.clamp_(0.0, 1.0)


def _resize_pil(dataset: Any, idx: Tensor, h: int, w: int) -> Tensor:
    """Decode the images ``idx`` of a dataset of PIL images, centre-crop, resize to [0, 1]."""
    import numpy as np
    from PIL import Image

    out = torch.empty(len(idx), 3, h, w)
    for j, i in enumerate(idx.tolist()):  # decoding files is inherently per image
        img = dataset[i][0].convert("RGB")
        top, left, ch, cw = _crop_box(img.height, img.width, h, w)
        img = img.resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        out[j] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return out


def load_ood(
    name: str,
    root: str | os.PathLike[str],
    shape: tuple[int, int, int],
    *,
    download: bool = False,
    n: int | None = None,
    seed: int = 0,
) -> OODSet:
    """A real OOD data set (test split) through torchvision or pytorch-ood, as an
    :class:`OODSet` of images of ``shape`` in [0, 1].

    Images are centre-cropped to the aspect ratio of ``shape``, resized (bilinear,
    anti-aliased), and converted between grayscale and RGB as ``shape`` asks (luminance
    weights for RGB -> gray, replication for gray -> RGB). EMNIST letters are transposed upright
    (its files store them transposed).

    :param name: one of :data:`OOD_DATASETS`: ``"fashion_mnist"``, ``"kmnist"``,
        ``"emnist_letters"``, ``"cifar10"``, ``"svhn"``, ``"textures"``
    :param root: directory of the data, in torchvision's layout (e.g.
        ``root/FashionMNIST/raw/t10k-images-idx3-ubyte``)
    :param shape: image shape :math:`(C, H, W)`, ``C`` in {1, 3}
    :param download: download missing files to ``root`` (needs internet)
    :param n: keep a random subset of this many images (chosen with ``seed``, kept in file
        order); ``None`` keeps all
    :param seed: seed of the subset choice
    :return: the set, named ``name``
    :raises ValueError: on an unknown ``name`` (the message lists :data:`OOD_DATASETS`), a bad
        ``shape``, ``n`` larger than the data set, or files that cannot be loaded (corrupted, or a failed
        download; the original error is chained)
    :raises FileNotFoundError: with ``download=False``, if files are missing under ``root``
        (the message lists them and says to pass ``download=True``)
    """
    if name not in OOD_DATASETS:
        raise ValueError(f"unknown OOD data set {name!r}; expected one of {sorted(OOD_DATASETS)}")
    c, h, w = _check_shape(shape)
    if c not in (1, 3):
        raise ValueError(f"expected shape with 1 (grayscale) or 3 (RGB) channels, got {shape}")
    if n is not None:
        _check_n(n)
    gen = _seed_generator(seed)
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"expected root to be a path, got {type(root).__name__}")
    root = Path(root).expanduser()
    source = OOD_DATASETS[name]
    if not download:
        missing = [str(p) for p in source.expected(root) if not p.exists()]
        if missing:
            raise FileNotFoundError(
                f"{name}: files not found under root {str(root)!r}; missing: {missing}. "
                f"Pass download=True to download them there, or point root at the directory "
                f"that holds them ({source.description})."
            )
    try:
        data = source.load(root, download)
    except Exception as e:  # torchvision raises RuntimeError, AssertionError, ... on bad files
        raise ValueError(
            f"{name}: could not load the files under root {str(root)!r}: {type(e).__name__}: {e}"
        ) from e

    total = len(data)
    if n is not None and n > total:
        raise ValueError(f"expected n <= {total} (the size of {name}), got {n}")
    if n is None:
        idx = torch.arange(total)
    else:
        idx = torch.randperm(total, generator=gen)[:n].sort().values
    if isinstance(data, Tensor):
        x = _resize_uint8(data[idx], h, w)
    else:
        x = _resize_pil(data, idx, h, w)
    x = _to_channels(x, c)
    info = {"dataset": name, "root": str(root), "split": "test", "n": len(idx), "seed": seed}
    info |= {"n_total": total, "shape": [c, h, w], "source": source.description}
    return OODSet(x, name, info)
