#!/usr/bin/env bash
# the CuTe attention GPU tests with every artefact in .kernels_new
mkdir -p $OUT/suite; bash scripts/offline_gpu/setup.sh > $OUT/suite/setup.log 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/kernels:$PWD:/tmp/site PARALLAX_KERNEL_DIR=$PWD/.kernels_new PARALLAX_TRITON_AUTOTUNE=0
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/suite/device.txt
timeout 400 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cute_attention.py tests/test_cute_backward.py \
  tests/test_cute_decode.py > $OUT/suite/pytest.log 2>&1
