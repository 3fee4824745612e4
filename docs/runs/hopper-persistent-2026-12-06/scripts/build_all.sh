#!/bin/bash
# build every artefact the GPU suite and the benchmarks use into $1 (from the repository root given as $2)
set -e
out=$1; cd $2
B="env CUTE_DSL_ARCH=sm_90a PYTHONPATH=kernels:. /work/venv/bin/python scripts/build_kernels.py --attention --out $out"
rm -rf $out
$B --dtype bfloat16 & $B --dtype float16; wait
$B --dtype bfloat16 --causal 1 --documents 0 --backward-lpt 0 --backward-deterministic 0 1 &
$B --dtype bfloat16 --head-dim 128 --causal 1 --documents 0 --no-backward --stages 2; wait
$B --dtype bfloat16 --head-dim 128 --causal 1 --documents 0 --no-backward --pingpong 0 &
$B --dtype bfloat16 --head-dim 128 --causal 1 --documents 0 --no-backward --lazy-rescale 0; wait
$B --dtype bfloat16 --head-dim 128 --causal 1 --documents 0 --no-backward --lpt 1 --stacked 1 0 &
$B --dtype bfloat16 --no-backward --lpt 0 1 --forward-persistent 1; wait
$B --dtype bfloat16 --head-dim 64 --no-backward --forward-warpgroups 2 &
$B --dtype bfloat16 float16 --no-backward --stacked 0; wait
$B --dtype bfloat16 float16 --no-backward --stacked 1 --overlap 0 &
$B --dtype bfloat16 --backward-decoupled 1 --backward-deterministic 0 1; wait
$B --dtype bfloat16 --head-dim 64 --backward-k-registers 1 --backward-deterministic 0 1
$B --dtype bfloat16 --head-dim 64 --no-backward --forward-warpgroups 2 --forward-persistent 1
$B --dtype bfloat16 --head-dim 64 --no-backward --forward-warpgroups 2 --forward-persistent 1 --lpt 1 --causal 1 --documents 0
echo BUILD_DONE
