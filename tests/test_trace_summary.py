"""Profiling a training step: scripts/trace_summary.py on small hand-written Chrome traces,
scripts/offline_gpu/profile_train.sh with a stand-in bench_train, and `[profiling] host_ops`."""

import json
from pathlib import Path

import pytest

from scripts import trace_summary

REPO_ROOT = Path(__file__).resolve().parents[1]


def _trace(path, kernels):
    events = [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 999}]
    events += [{"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur} for name, ts, dur in kernels]
    path.write_text(json.dumps({"traceEvents": events}))
    return path


def test_categories_sums_and_gaps(tmp_path, capsys):
    a = _trace(tmp_path / "a.json", [
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", 0, 100),
        ("kernel_cutlass_kernel_parallax_kernelsparallaxcute_kernelParallaxAttentionForward_obj", 150, 300),
        ("triton_poi_fused_add_mul_0", 400, 60),  # overlaps the attention kernel on another stream
        ("ncclDevKernel_AllGather_RING_LL", 500, 40),
    ])
    b = _trace(tmp_path / "b.json", [
        ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", 0, 100),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x128x128", 100, 120),
    ])
    s = trace_summary.summarise(a)
    assert s["total"] == 500
    assert s["span"] == 540
    assert s["busy"] == 100 + 310 + 40  # [0,100), [150,460), [500,540)
    assert s["categories"] == {"matmul": 100, "parallax attention, CuTe": 300,
                               "Inductor fused (elementwise, norms, RoPE)": 60, "collectives (NCCL)": 40}
    trace_summary.main([str(a), str(b), "--labels", "parallax", "softmax", "--top", "2"])
    out = capsys.readouterr().out
    assert "| softmax attention (cuDNN, flash, flex) | 0.0 | 0.1 | +0.1 |" in out
    assert "| parallax attention, CuTe | 0.3 | 0.0 | -0.3 |" in out
    assert "| no kernel running inside that span | 0.1 | 0.0 | -0.1 |" in out
    kernels, idle = out.split("GPU idle time", 1)
    assert kernels.count("| `") == 4  # two kernels listed per trace
    assert "| `(launch not in the trace)` | 2 | 0.09 | 0.00 |" in idle  # these traces have no launch calls


def test_idle_time_is_named_by_the_host_ops_that_launched_the_kernel_after_each_gap(tmp_path, capsys):
    def op(name, ts, dur, cat="cpu_op", tid=1, **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": 9, "tid": tid, "ts": ts, "dur": dur, "args": args}

    events = [
        op("ProfilerStep#8", 0, 1000, cat="user_annotation"),
        op("CompiledFunction", 0, 300),
        op("aten::mm", 10, 20),
        op("cudaLaunchKernel", 12, 5, cat="cuda_runtime", correlation=1),
        op("parallax::attention_bwd_cute", 100, 150),
        op("cuLaunchKernel", 240, 5, cat="cuda_driver", correlation=2),  # launched after the GPU went idle
        op("Optimizer.step#Muon.step", 400, 500, cat="user_annotation", tid=2),
        op("aten::mm", 410, 10, tid=2),
        op("cudaLaunchKernel", 412, 5, cat="cuda_runtime", tid=2, correlation=3),  # launched before the gap
        {"ph": "X", "cat": "kernel", "name": "nvjet_gemm", "ts": 20, "dur": 180, "args": {"correlation": 1}},
        {"ph": "X", "cat": "kernel", "name": "ParallaxAttentionBackward", "ts": 250, "dur": 200,
         "args": {"correlation": 2}},
        {"ph": "X", "cat": "kernel", "name": "nvjet_gemm", "ts": 470, "dur": 30, "args": {"correlation": 3}},
        {"ph": "X", "cat": "kernel", "name": "triton_poi_fused_add_0", "ts": 520, "dur": 10, "args": {}},
    ]
    trace = tmp_path / "t.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    s = trace_summary.summarise(trace)
    assert s["span"] - s["busy"] == 50 + 20 + 20
    assert s["idle"] == {"CompiledFunction > parallax::attention_bwd_cute": [1, 50.0, 40.0],
                         "Optimizer.step#Muon.step > aten::mm": [1, 20.0, 0.0],
                         "(launch not in the trace)": [1, 20.0, 0.0]}
    trace_summary.main([str(trace)])
    assert "| `CompiledFunction > parallax::attention_bwd_cute` | 1 | 0.05 | 0.04 |" in capsys.readouterr().out

    # without the host's ops (`[profiling] host_ops = false`) a gap goes by the category of the kernel ending it
    gpu_only = [e for e in events if e["cat"] not in ("cpu_op", "user_annotation")]
    trace.write_text(json.dumps({"traceEvents": gpu_only}))
    assert trace_summary.summarise(trace)["idle"] == {
        "(no CPU op around the launch) > parallax attention, CuTe": [1, 50.0, 40.0],
        "(no CPU op around the launch) > matmul": [1, 20.0, 0.0], "(launch not in the trace)": [1, 20.0, 0.0]}


@pytest.mark.parametrize("name,expected", [
    ("_bwd_dkdv", "parallax attention, Triton"),  # the function the autotuned _bwd_dkdv_kernel runs
    ("_bwd_dqdr_kernel", "parallax attention, Triton"),
    ("_statistics_kernel", "parallax attention, Triton"),
    ("_dkdv_helper", "other"),
    ("triton_tem_fused_mm_4", "matmul"),
    ("void at::native::scatter_gather_elementwise_kernel<128, 8>", "other elementwise and reductions (eager)"),
    ("Memcpy DtoD (Device -> Device)", "copies and fills"),
    ("triton_red_fused__to_copy_mul_sum_3", "Inductor fused (elementwise, norms, RoPE)"),
    ("triton_per_fused__scaled_dot_product_cudnn_attention__to_copy_add_cat_mean_1",
     "Inductor fused (elementwise, norms, RoPE)"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26", "softmax attention (cuDNN, flash, flex)"),
    ("void at::native::elementwise_kernel<128, 4>", "other elementwise and reductions (eager)"),
    ("flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel", "softmax attention (cuDNN, flash, flex)"),
    ("something_new", "other"),
])
def test_category_names(name, expected):
    assert trace_summary.category(name) == expected


def test_bad_input_is_named(tmp_path, capsys):
    bad = tmp_path / "cpu_only.json"
    bad.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 1}]}))
    with pytest.raises(SystemExit, match="cpu_only.json: no GPU kernel events"):
        trace_summary.summarise(bad)
    with pytest.raises(SystemExit):
        trace_summary.main([str(bad), str(bad), "--labels", "x"])
    assert "--labels has 1 names for 2 traces" in capsys.readouterr().err


FAKE_BENCH_TRAIN = r'''
import json, sys
from pathlib import Path
args = sys.argv[1:]
Path(sys.argv[0]).parent.joinpath("bench_train_args.txt").write_text(" ".join(args))
out, size = Path(args[args.index("--out") + 1]), args[args.index("--size") + 1]
variants = args[args.index("--variants") + 1: args.index("--steps")]
freq = args[args.index("--profiling.profile_freq") + 1]
for i, v in enumerate(variants):
    trace = out / f"{size}_{v}_muon" / "profile_traces" / f"iteration_{freq}" / "rank0_trace.json"
    trace.parent.mkdir(parents=True)
    kernels = [{"ph": "X", "cat": "kernel", "name": "nvjet_gemm", "ts": 0, "dur": 1000 * (i + 1)}]
    trace.write_text(json.dumps({"traceEvents": kernels}))
    (out / f"{size}_{v}_muon.log").write_text("log")
print("| run | tokens/s per GPU |")
'''


def test_profile_train_script_summarises_the_traces_bench_train_writes(tmp_path):
    """scripts/offline_gpu/profile_train.sh profiles one step of each bench_train run and reads back exactly those
    traces (a stand-in bench_train writes them where torchtitan would, for the step the script asks for)."""
    import sys

    from conftest import REPO, run_offline_gpu_script, stand_in_commands

    (tmp_path / "bin").mkdir()
    fake = tmp_path / "bin" / "fake_bench_train.py"
    fake.write_text(FAKE_BENCH_TRAIN)
    path = stand_in_commands(tmp_path / "bin", {"python3": (
        f'if [ "$1" = scripts/bench_train.py ]; then shift; exec {sys.executable} {fake} "$@"; fi\n'
        f'exec {sys.executable} "$@"\n')})
    out = tmp_path / "out"
    proc = run_offline_gpu_script("profile_train.sh", cwd=REPO, PATH=path, OUT=str(out), RUNS_DIR=str(tmp_path / "runs"),
                                  VARIANTS="transformer parallax")
    assert proc.returncode == 0, proc.stderr
    args = (tmp_path / "bin" / "bench_train_args.txt").read_text()
    assert "--profiling.enable_profiling" in args and "--parallax.attention_backend cute" in args
    assert "--profiling.host_ops true" in args
    summary = (out / "trace_summary.md").read_text()
    assert "| matmul | 1.0 | 2.0 | +1.0 |" in summary
    assert sorted(p.name for p in out.iterdir()) == ["0.6B_parallax_muon.log", "0.6B_transformer_muon.log",
                                                     "bench_train.txt", "trace_summary.md"]


def test_every_launched_parallax_triton_kernel_is_counted_as_attention():
    """A trace names a Triton kernel by its @triton.jit function (an autotuned wrapper runs the function under
    the function's name): each kernel the Triton backend and the CuTe backward's launch start is attention."""
    from parallax_kernels.parallax import cute_backward_io, triton_fused

    launched = {name: obj for module in (triton_fused, cute_backward_io) for name, obj in vars(module).items()
                if name.endswith("_kernel") and hasattr(obj, "run")}
    assert {"_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_fused_kernel", "_bwd_dqdr_kernel", "_bwd_preprocess_kernel",
            "_statistics_kernel", "_tiles_kernel"} <= set(launched)
    for name, kernel in launched.items():
        fn = getattr(kernel, "fn", kernel)  # Autotuner -> JITFunction
        traced = getattr(fn, "fn", fn).__name__
        assert trace_summary.category(traced) == "parallax attention, Triton", (name, traced)


def test_profiling_without_host_ops_keeps_the_gpu_activity_and_drops_the_host_records():
    """`[profiling] host_ops = false`: the profiler torchtitan builds records the GPU activity and no CPU ops or
    shapes; the key parses as a bool; torch.profiler.profile is restored after training."""
    import torch
    from torch.profiler import ProfilerActivity
    from torchtitan.config import ConfigManager

    import parallax_titan.register  # noqa: F401
    from parallax_titan.job_config import JobConfig, normalize_bool_flags
    from parallax_titan.trainer import gpu_activity_only, without_host_ops

    built = []
    profile = without_host_ops(lambda *args, **kwargs: built.append(kwargs))
    profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True, schedule="s")
    assert built == [{"activities": [ProfilerActivity.CUDA], "record_shapes": False, "schedule": "s"}]
    with pytest.raises(ValueError, match=r"\[profiling\] host_ops = false: the profiler records no GPU activity"):
        profile(activities=[ProfilerActivity.CPU, None])  # torchtitan's list on a machine without a GPU

    original = torch.profiler.profile
    with gpu_activity_only():
        assert torch.profiler.profile is not original and torch.profiler.profile.__wrapped__ is original
    assert torch.profiler.profile is original

    config_file = REPO_ROOT / "configs" / "debug_cpu.toml"
    for flag, expected in (("false", False), ("true", True)):
        args = normalize_bool_flags(["--job.config_file", str(config_file), "--profiling.host_ops", flag], JobConfig)
        assert ConfigManager().parse_args(args).profiling.host_ops is expected
