#!/usr/bin/env bash
# One GPU session's checks in one call: the CUDA tests, the detectors' scoring cost against the
# forward pass on the GPU (MNIST LeNet and ResNet), and, when the weights are committed, a
# fast CIFAR-10 folder run with the reference ResNet-20.
#
# Prepare here (a machine with pip and the package installed), once:
#
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl \
#       pytorch-ood==0.4.0 foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.2.1 gitdb==4.0.12 \
#       smmap==5.0.3
#   python -m pip wheel --no-deps -w .whl .                  # this package, entry points too
#   mkdir -p .data && cp -r ../shared/data/MNIST .data/       # about 55 MB, optional
#
# then run it through the device tool, carrying .whl (and .data):
#
#   bash benchmarks/device_check.sh          # writes into $OUT (or benchmarks/results/gpu)
#
# Every number it writes comes from this command; commit the files with it.
set -uo pipefail
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
# into the machine's own Python (root there), so that the entry points and the bridge's .pth
# file are installed as pip installs them for users
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl || exit 1
python3 - <<'EOF' | tee "$OUT/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
# 1. the CUDA tests (they skip without a GPU, so here they must run)
python3 -m pytest -q -p no:cacheprovider tests/test_benchmark_devices.py \
    tests/test_common_detectors.py -k "cuda or device" 2>&1 | tee "$OUT/cuda_tests.txt"
# 2. the scoring cost against the forward pass, on the GPU
if [ -d .data/MNIST ]; then
    python3 benchmarks/speed.py --data-root .data --device cuda 2>&1 | tail -20
    python3 benchmarks/speed.py --data-root .data --device cuda --arch resnet 2>&1 | tail -20
    cp benchmarks/results/speed_mnist*_cuda.md "$OUT/" 2>/dev/null || true
fi
# 3. a fast CIFAR-10 folder run with the reference ResNet-20 (needs the images under .data)
if [ -f benchmarks/weights/resnet20.pt ] && [ -d .data/cifar10/train ]; then
    python3 -m uniad_plugin.cli --dataset folder --train-dir .data/cifar10/train \
        --test-dir .data/cifar10/test --arch uniad_plugin.models:resnet20_cifar \
        --model benchmarks/weights/resnet20.pt --device cuda --fast --out /tmp/cifar_fast \
        2>&1 | tail -40 | tee "$OUT/cifar10_fast.txt"
fi
