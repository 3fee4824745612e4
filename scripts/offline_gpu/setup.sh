#!/usr/bin/env bash
# Set up a GPU host without internet access: install the wheels copied with the checkout in .whl/ into /tmp/site,
# with links to this checkout's packages. The host brings torch (CUDA) and triton; .whl/ holds the project's
# other dependencies (pyproject.toml; fla-core for the benchmarks' peer) as wheels for the host's Python,
# downloaded on a machine with internet, e.g. `pip download --no-deps -d .whl torchtitan==0.2.2 ...`. Then:
#   export PYTHONPATH=/tmp/site
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
# the project itself is linked, not copied: the tools find scripts/train.sh and configs/ beside the packages
ln -sfn "$PWD/parallax_titan" /tmp/site/parallax_titan
ln -sfn "$PWD/kernels/parallax_kernels" /tmp/site/parallax_kernels
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
