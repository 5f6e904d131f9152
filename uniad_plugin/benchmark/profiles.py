"""The defaults of each data set: one :class:`Profile` per data set and its fast variant, in
:data:`PROFILES`: scikit-learn's digits (:data:`DIGITS`, offline), MNIST (:data:`MNIST`),
CIFAR-10 (:data:`CIFAR10`), CIFAR-100 (:data:`CIFAR100`), OpenOOD's ImageNet-200
(:data:`IMAGENET200`), ImageNet-1K (:data:`IMAGENET`) and the user's own ``ImageFolder`` trees
(:data:`FOLDER`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from uniad_plugin.benchmark.anomaly_sets import OFFLINE_OOD_SETS

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "CIFAR100_FAST",
    "CIFAR10_FAST",
    "DIGITS",
    "DIGITS_FAST",
    "FOLDER",
    "FOLDER_FAST",
    "IMAGENET",
    "IMAGENET200",
    "IMAGENET200_FAST",
    "IMAGENET_FAST",
    "MNIST",
    "MNIST_FAST",
    "PROFILES",
    "Profile",
]


@dataclass(frozen=True)
class Profile:
    """Defaults of one data set.

    :param name: data set name (``"digits"``, ``"mnist"``, ``"cifar10"``, ``"cifar100"``,
        ``"imagenet200"``, ``"imagenet"``, ``"folder"``)
    :param arch: ``"module:function"`` of the reference architecture
    :param epochs: training epochs of the reference model
    :param train_batch_size: batch size of its training
    :param eps: default attack budgets by norm (``"linf"``, ``"l2"``) or by attack name
    :param ood: default OOD sets (``"openood"``: the near- and far-OOD sets of the data set's
        OpenOOD v1.5 benchmark)
    :param optional_ood: default OOD sets that are left out with a note when their files are
        missing
    :param n_noise: images per noise set
    :param n_ood: images per OOD set
    :param n_attack: correctly classified sources attacked per attack and budget (``None``: all)
    :param n_fit: training samples the detectors are fitted on (``None``: all)
    :param attack_params: foolbox keyword overrides per attack name
    :param n_test: ID test images (``None``: the data set's fixed split)
    :param attack_split: images of the attack split (``None``: the data set's fixed split); a
        full run grows it to ``n_attack`` if that is larger
    :param grid_levels: the ID data's value grid: values are ``k / grid_levels`` (16 for
        scikit-learn's digits, 255 for 8-bit images); generated anomaly sets are put on it
    :param validation_eps: the attack budgets of ``split="validation"``, other than ``eps``
    :param n_val: held-out ID images for thresholds (``None``: the data set's fixed split)
    :param image_size: side the images are resized and cropped to (``None``: the data set's
        own size, which cannot be changed)
    """

    name: str
    arch: str
    epochs: int
    train_batch_size: int
    eps: Mapping[str, tuple[float, ...]]
    ood: tuple[str, ...]
    optional_ood: tuple[str, ...]
    n_noise: int
    n_ood: int
    n_attack: int | None
    n_fit: int | None
    attack_params: Mapping[str, Mapping[str, Any]]
    n_test: int | None = None
    attack_split: int | None = None
    grid_levels: int = 255
    validation_eps: Mapping[str, tuple[float, ...]] | None = None
    n_val: int | None = None
    image_size: int | None = None


#: C&W settings of the command: 3 binary-search steps of 50 Adam steps from c = 1 (instead
#: of foolbox's 5 x 100 from c = 0.01): 150 instead of 500 gradient steps per input
_CW_DEFAULT: dict[str, Any] = {"steps": 50, "binary_search_steps": 3, "initial_const": 1.0}
_CW_FAST: dict[str, Any] = {**_CW_DEFAULT, "steps": 20, "binary_search_steps": 2}

#: scikit-learn's digits (1x8x8, offline): a small CNN, 30 epochs
DIGITS = Profile(
    name="digits",
    arch="uniad_plugin.models:digits_cnn",
    epochs=30,
    train_batch_size=64,
    eps={
        "linf": (0.1, 0.2),
        "l2": (0.5, 1.0),
        "deepfool": (1.0,),
        "cw_l2": (1.0,),
        "pgd_linf_obj": (0.3,),
        "pgd_l2_obj": (1.5,),
    },
    ood=OFFLINE_OOD_SETS,
    optional_ood=(),
    n_noise=450,
    n_ood=450,
    n_attack=None,
    n_fit=None,
    attack_params={"cw_l2": _CW_DEFAULT},
    grid_levels=16,
    validation_eps={
        "linf": (0.15, 0.25),
        "l2": (0.75, 1.25),
        "deepfool": (1.25,),
        "cw_l2": (1.25,),
        "pgd_linf_obj": (0.25,),
        "pgd_l2_obj": (1.25,),
    },
)

#: :data:`DIGITS` with small sizes: one budget per attack, 50 attack sources, 100 images per
#: OOD / noise set, C&W 2 x 20 steps
DIGITS_FAST = dataclasses.replace(
    DIGITS,
    eps={**DIGITS.eps, "linf": (0.2,), "l2": (1.0,)},
    validation_eps={**DIGITS.validation_eps, "linf": (0.25,), "l2": (1.25,)},
    n_noise=100,
    n_ood=100,
    n_attack=50,
    attack_params={"cw_l2": _CW_FAST},
)

#: MNIST (1x28x28) through torchvision: LeNet, 3 epochs; 2,000 ID test images and an attack
#: split of 1,000 images from MNIST's test set
MNIST = Profile(
    name="mnist",
    arch="uniad_plugin.models:lenet",
    epochs=3,
    train_batch_size=128,
    eps={
        "linf": (0.1, 0.3),
        "l2": (1.0, 2.0),
        "deepfool": (2.0,),
        "cw_l2": (2.0,),
        "pgd_linf_obj": (0.3,),
        "pgd_l2_obj": (3.0,),
    },
    ood=(*OFFLINE_OOD_SETS, "fashion_mnist", "kmnist"),
    optional_ood=("fashion_mnist", "kmnist"),
    n_noise=1000,
    n_ood=1000,
    n_attack=500,
    n_fit=None,
    attack_params={"cw_l2": _CW_DEFAULT},
    n_test=2000,
    attack_split=1000,
    grid_levels=255,
    validation_eps={
        "linf": (0.15, 0.25),
        "l2": (1.5, 2.5),
        "deepfool": (2.5,),
        "cw_l2": (2.5,),
        "pgd_linf_obj": (0.25,),
        "pgd_l2_obj": (2.5,),
    },
    n_val=1000,
)

#: :data:`MNIST` with small sizes: 1 epoch, 200 test images, 50 attack sources, detectors
#: fitted on 2,000 training images
MNIST_FAST = dataclasses.replace(
    MNIST,
    epochs=1,
    eps={**MNIST.eps, "linf": (0.3,), "l2": (2.0,)},
    validation_eps={**MNIST.validation_eps, "linf": (0.25,), "l2": (2.5,)},
    n_noise=100,
    n_ood=100,
    n_attack=50,
    n_fit=2000,
    attack_params={"cw_l2": _CW_FAST},
    n_test=200,
    attack_split=50,
    n_val=200,
)

#: attack budgets for 3x32x32 images in [0, 1] (8-bit): the usual L-inf 2/255 and 8/255 and
#: L2 0.25 and 0.5 of CIFAR-10 robustness benchmarks
_RGB32_EPS: dict[str, tuple[float, ...]] = {
    "linf": (2 / 255, 8 / 255),
    "l2": (0.25, 0.5),
    "deepfool": (0.5,),
    "cw_l2": (0.5,),
    "pgd_linf_obj": (8 / 255,),
    "pgd_l2_obj": (0.5,),
}
#: other budgets of the validation split
_RGB32_VALIDATION_EPS: dict[str, tuple[float, ...]] = {
    "linf": (3 / 255, 6 / 255),
    "l2": (0.3, 0.6),
    "deepfool": (0.6,),
    "cw_l2": (0.6,),
    "pgd_linf_obj": (6 / 255,),
    "pgd_l2_obj": (0.6,),
}

#: the OpenOOD v1.5 sets of a data set (near- and far-OOD), left out with a note when their
#: files are missing (as MNIST's fashion_mnist and kmnist)
_OPENOOD = ("openood",)

#: CIFAR-10 (3x32x32) through torchvision: a small ResNet
#: (:func:`~uniad_plugin.models.resnet_cifar`), 10 epochs; 2,000 ID test images and an attack
#: split of 1,000 images from CIFAR-10's test set; the offline OOD sets rendered in RGB and
#: OpenOOD's near-OOD (CIFAR-100, TinyImageNet) and far-OOD (MNIST, SVHN, Textures, Places365)
#: sets when their files are there. These defaults are not yet measured on the real data set.
CIFAR10 = dataclasses.replace(
    MNIST,
    name="cifar10",
    arch="uniad_plugin.models:resnet_cifar",
    epochs=10,
    eps=_RGB32_EPS,
    ood=(*OFFLINE_OOD_SETS, *_OPENOOD),
    optional_ood=_OPENOOD,
    validation_eps=_RGB32_VALIDATION_EPS,
)

#: :data:`CIFAR10` with small sizes (those of :data:`MNIST_FAST`): 1 epoch, one budget per norm
CIFAR10_FAST = dataclasses.replace(
    MNIST_FAST,
    name="cifar10",
    arch=CIFAR10.arch,
    eps={**_RGB32_EPS, "linf": (8 / 255,), "l2": (0.5,)},
    validation_eps={**_RGB32_VALIDATION_EPS, "linf": (6 / 255,), "l2": (0.6,)},
    ood=CIFAR10.ood,
    optional_ood=_OPENOOD,
)

#: CIFAR-100 (3x32x32, 100 classes) through torchvision: the :data:`CIFAR10` defaults, with
#: OpenOOD's near-OOD (CIFAR-10, TinyImageNet) and far-OOD sets
CIFAR100 = dataclasses.replace(CIFAR10, name="cifar100")
#: :data:`CIFAR100` with the small sizes of :data:`CIFAR10_FAST`
CIFAR100_FAST = dataclasses.replace(CIFAR10_FAST, name="cifar100")

#: the user's ``ImageFolder`` trees (``--train-dir``, ``--test-dir``; RGB, resized to
#: ``--image-size``, default 32): the CIFAR-10 defaults with the offline OOD sets only, the
#: test folder split by fixed fractions (half test, a quarter attack split, a quarter held
#: out; see :func:`~uniad_plugin.data.folder_splits`)
FOLDER = dataclasses.replace(
    CIFAR10,
    name="folder",
    n_test=None,
    attack_split=None,
    n_val=None,
    ood=OFFLINE_OOD_SETS,
    optional_ood=(),
    image_size=32,
)
#: :data:`FOLDER` with the small sizes of :data:`CIFAR10_FAST`
FOLDER_FAST = dataclasses.replace(
    CIFAR10_FAST,
    name="folder",
    n_test=None,
    attack_split=None,
    n_val=None,
    ood=OFFLINE_OOD_SETS,
    optional_ood=(),
    image_size=32,
)

#: attack budgets for 3x224x224 images in [0, 1]: L-inf 1/255 and 4/255 (the usual ImageNet
#: robustness budget), L2 1 and 3
_RGB224_EPS: dict[str, tuple[float, ...]] = {
    "linf": (1 / 255, 4 / 255),
    "l2": (1.0, 3.0),
    "deepfool": (3.0,),
    "cw_l2": (3.0,),
    "pgd_linf_obj": (4 / 255,),
    "pgd_l2_obj": (3.0,),
}
#: other budgets of the validation split
_RGB224_VALIDATION_EPS: dict[str, tuple[float, ...]] = {
    "linf": (2 / 255, 3 / 255),
    "l2": (1.5, 2.5),
    "deepfool": (2.5,),
    "cw_l2": (2.5,),
    "pgd_linf_obj": (3 / 255,),
    "pgd_l2_obj": (2.5,),
}

#: OpenOOD's ImageNet-200 (3x224x224, 200 classes; its image lists through pytorch-ood):
#: torchvision's ResNet-18 (:func:`~uniad_plugin.models.imagenet_resnet18`; bring your own
#: trained model with ``--model``: training it here is for small copies only); 1,000 ID test
#: images, an attack split of 500 and 500 held-out images from the test list; detectors fitted
#: on 10,000 training images; 500 images per OOD and noise set, 200 attacked sources; the
#: offline OOD sets and OpenOOD's near-OOD (SSB-hard, NINCO) and far-OOD (iNaturalist,
#: Textures, OpenImage-O) sets. Not yet measured on the real data set.
IMAGENET200 = Profile(
    name="imagenet200",
    arch="uniad_plugin.models:imagenet_resnet18",
    epochs=10,
    train_batch_size=64,
    eps=_RGB224_EPS,
    ood=(*OFFLINE_OOD_SETS, *_OPENOOD),
    optional_ood=_OPENOOD,
    n_noise=500,
    n_ood=500,
    n_attack=200,
    n_fit=10000,
    attack_params={"cw_l2": _CW_DEFAULT},
    n_test=1000,
    attack_split=500,
    grid_levels=255,
    validation_eps=_RGB224_VALIDATION_EPS,
    n_val=500,
    image_size=224,
)
#: :data:`IMAGENET200` with small sizes: 1 epoch, one budget per norm, 100 test and 100
#: held-out images, 50 attack sources, 50 images per OOD / noise set, fit on 1,000 images
IMAGENET200_FAST = dataclasses.replace(
    IMAGENET200,
    epochs=1,
    eps={**_RGB224_EPS, "linf": (4 / 255,), "l2": (3.0,)},
    validation_eps={**_RGB224_VALIDATION_EPS, "linf": (3 / 255,), "l2": (2.5,)},
    n_noise=50,
    n_ood=50,
    n_attack=50,
    n_fit=1000,
    attack_params={"cw_l2": _CW_FAST},
    n_test=100,
    attack_split=50,
    n_val=100,
)
#: ImageNet-1K in torchvision's folder layout (3x224x224, one class per folder): the
#: :data:`IMAGENET200` defaults, with the OpenOOD sets of ImageNet-1K
IMAGENET = dataclasses.replace(IMAGENET200, name="imagenet")
#: :data:`IMAGENET` with the small sizes of :data:`IMAGENET200_FAST`
IMAGENET_FAST = dataclasses.replace(IMAGENET200_FAST, name="imagenet")

#: data set name -> (profile, fast profile)
PROFILES: Mapping[str, tuple[Profile, Profile]] = {
    "digits": (DIGITS, DIGITS_FAST),
    "mnist": (MNIST, MNIST_FAST),
    "cifar10": (CIFAR10, CIFAR10_FAST),
    "cifar100": (CIFAR100, CIFAR100_FAST),
    "imagenet200": (IMAGENET200, IMAGENET200_FAST),
    "imagenet": (IMAGENET, IMAGENET_FAST),
    "folder": (FOLDER, FOLDER_FAST),
}
