#!/usr/bin/env bash
# On an offline GPU host (the `device` machines): install the carried wheels (.whl/, fetched with
# ../shared/device/fetch-wheels.sh plus fla-core) and this repo into /tmp/site. Then:
#   export PYTHONPATH=/tmp/site
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
