#!/usr/bin/env bash
# On an offline GPU host (the `device` machines): install the carried wheels (.whl/, fetched with
# ../shared/device/fetch-wheels.sh plus fla-core) into /tmp/site, with links to this checkout's packages. Then:
#   export PYTHONPATH=/tmp/site
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
# the project itself is linked, not copied: the tools find scripts/train.sh and configs/ beside the packages
ln -sfn "$PWD/parallax_titan" /tmp/site/parallax_titan
ln -sfn "$PWD/kernels" /tmp/site/parallax_kernels
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
