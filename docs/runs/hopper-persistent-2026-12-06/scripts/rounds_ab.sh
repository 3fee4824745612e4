#!/usr/bin/env bash
# the default, persistent and persistent lpt forwards timed in 15 alternating rounds in one process (--repeat),
# this checkout's build and HEAD's (.gpujob/base); then Nsight Compute on the 2K shape's default and persistent
# lpt forward (this checkout)
set -u
FINAL=$OUT; OUT=/tmp/runlogs; mkdir -p $OUT
trap 'tar czf $FINAL/logs.tgz -C /tmp runlogs' EXIT
bash scripts/offline_gpu/setup.sh > $OUT/setup.log 2>&1 || { cat $OUT/setup.log; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/kernels:$PWD PARALLAX_KERNEL_DIR=$PWD/.kernels_new PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv | tee $OUT/device.txt
SHAPES="8,16,2048,128 4,16,4096,128 2,16,8192,128 1,16,16384,128 4,16,4096,64"
bench() {  # $1: label, $2: checkout, $3: kernel dir, then extra args
  local label=$1 dir=$2 kd=$3; shift 3
  (cd $dir && PYTHONPATH=$dir/kernels:$dir:/tmp/site PARALLAX_KERNEL_DIR=$kd timeout 200 python3 scripts/bench_attention.py \
     --shapes ${BSHAPES:-$SHAPES} --peers parallax-cute sdpa-cudnn --torch-backend-max-tokens 0 "$@" \
     --json $OUT/bench_$label.json > $OUT/bench_$label.log 2>&1)
  echo "== bench $label rc=$?"; grep -E "^\(B|^\| (parallax-cute|sdpa-cudnn) |^  [a-z0-9]+: " $OUT/bench_$label.log
}
t0=$(date +%s)
V="--cute-variants s3stovps s3stovlpps s3stovpsw3 s3stovlppsw3 --repeat 15"
bench new $PWD $PWD/.kernels_new $V
echo "at $(( $(date +%s) - t0 )) s"
bench base $PWD/.gpujob/base $PWD/.gpujob/base/.kernels $V
echo "at $(( $(date +%s) - t0 )) s"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
echo "ncu: $NCU"
for var in default lpps; do
  timeout 120 $NCU --clock-control none --kernel-name regex:ParallaxAttentionForward --launch-skip 1 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
    --section SourceCounters --import-source no -o $OUT/fwd_2k_$var python3 .gpujob/prof_fwd.py 8,16,8,2048,128 $var \
    > $OUT/ncu_$var.console 2>&1
  echo "== ncu $var rc=$?"
  $NCU --import $OUT/fwd_2k_$var.ncu-rep --page details > $OUT/fwd_2k_$var.details.txt 2>&1
  grep -E "Duration|SM Active Cycles|Compute \(SM\) Throughput|Issue Slots Busy|Achieved Active Warps|Warp Cycles Per Issued" $OUT/fwd_2k_$var.details.txt
  rm -f $OUT/fwd_2k_$var.ncu-rep
done
echo "total $(( $(date +%s) - t0 )) s"
