#!/usr/bin/env bash
# .gpujob/exp (branch warp-adds, its artefacts): its backward default against b2wa (per-warp dQ/dR adds) in
# alternating rounds with cuDNN in the same run, then the GPU tests of the per-warp adds and the float64 ones
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
t0=$(date +%s)
EXP=$PWD/.gpujob/exp; cd $EXP
export PYTHONPATH=$EXP/kernels:$EXP:/tmp/site PARALLAX_KERNEL_DIR=$EXP/.kernels
timeout 150 python3 scripts/bench_attention.py --shapes 8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 4,16,4096,64 \
  --peers parallax-cute sdpa-cudnn --torch-backend-max-tokens 0 --repeat 7 --cute-backward-variants b2wa \
  --json $OUT/bench_ab.json > $OUT/bench_ab.log 2>&1
echo "== bench rc=$? at $(( $(date +%s) - t0 )) s"; grep -E "^\(B|^\| (parallax-cute|sdpa-cudnn) |^  |^ratio" $OUT/bench_ab.log
PARALLAX_TRITON_AUTOTUNE=0 timeout 170 python3 -m pytest -v -p no:cacheprovider -m gpu tests/test_cute_attention.py \
  -k "(opt_in_backward and warp_adds) or float64" > $OUT/gpu_tests.log 2>&1
echo "== tests rc=$? at $(( $(date +%s) - t0 )) s"; grep -c PASSED $OUT/gpu_tests.log; grep -E "FAILED|passed|failed" $OUT/gpu_tests.log | tail -8
