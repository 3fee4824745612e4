#!/usr/bin/env bash
# the persistent forward whose turns and per-warpgroup Q, R stages run on across work items (this checkout)
# against HEAD's (.gpujob/base, its own forward artefacts): GPU tests of the persistent and three-warpgroup
# forwards, then the five shapes timed alternating, cuDNN in every run
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/kernels:$PWD PARALLAX_KERNEL_DIR=$PWD/.kernels_new PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv | tee $OUT/device.txt
SHAPES="8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 4,16,4096,64"
bench() {  # $1: label, $2: checkout, $3: kernel dir, then extra args
  local label=$1 dir=$2 kd=$3; shift 3
  (cd $dir && PYTHONPATH=$dir/kernels:$dir:/tmp/site PARALLAX_KERNEL_DIR=$kd timeout 150 python3 scripts/bench_attention.py \
     --shapes ${BSHAPES:-$SHAPES} --peers parallax-cute sdpa-cudnn --torch-backend-max-tokens 0 "$@" \
     --json $OUT/bench_$label.json > $OUT/bench_$label.log 2>&1)
  echo "== bench $label rc=$?"; grep -E "^\(B|^\| (parallax-cute|sdpa-cudnn) |variants:|^ratio|s3stov" $OUT/bench_$label.log | head -40
}
t0=$(date +%s)
PARALLAX_TRITON_AUTOTUNE=0 timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cute_attention.py -m gpu \
  -k "persistent or three_warpgroup" > $OUT/gpu_tests.log 2>&1; echo "== tests rc=$? $(tail -1 $OUT/gpu_tests.log)"
echo "tests $(( $(date +%s) - t0 )) s"
bench new1 $PWD $PWD/.kernels_new --cute-variants s3stovps s3stovlpps s3stovpsw3 s3stovlppsw3
bench base1 $PWD/.gpujob/base $PWD/.gpujob/base/.kernels --cute-variants s3stovps s3stovlpps s3stovpsw3 s3stovlppsw3
echo "at $(( $(date +%s) - t0 )) s"
if [ $(( $(date +%s) - t0 )) -lt 330 ]; then
bench new2 $PWD $PWD/.kernels_new --cute-variants s3stovps s3stovlpps s3stovpsw3 s3stovlppsw3
bench base2 $PWD/.gpujob/base $PWD/.gpujob/base/.kernels --cute-variants s3stovps s3stovlpps s3stovpsw3 s3stovlppsw3
fi
echo "total $(( $(date +%s) - t0 )) s"
