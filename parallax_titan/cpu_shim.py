"""Run torchtitan 0.2.2's Trainer on a machine without a GPU (CPU + gloo). Not a fork: five patches.

torchtitan assumes CUDA and several of its modules copy `device_type`/`device_module` at import
(`torchtitan.tools.utils` does `device_type, device_module = get_device_info()`). So `install()`
must run before anything of torchtitan is imported; `python -m parallax_titan.train` does that.

1. `torch._utils._get_available_device_type` answers "cpu" (torchtitan then builds "cpu:0" devices
   and gloo process groups: gloo is torch's default backend for "cpu").
2. `torch._utils._get_device_module("cpu")` answers a stand-in for `torch.cuda` with the calls
   torchtitan makes: set_device, current_device, device name and memory, and memory stats that
   report the process's peak resident memory (all torchtitan's memory log line can show on CPU).
3. `torchtitan.distributed.utils.set_pg_timeouts` runs its barrier without `device_ids`
   (gloo rejects them) - patched after import, see `patch_torchtitan()`.
4. FSDP2 over several CPU ranks: torchtitan turns FSDP's gradient division off (factor 1.0), which FSDP
   sends as a PREMUL_SUM reduce-scatter that gloo does not implement. The patched
   `disable_fsdp_gradient_division` also asks FSDP for plain SUM collectives, the same sum.
5. `torchtitan.tools.utils.get_peak_flops` answers NaN for the CPU (unknown) instead of running `lspci`
   and falling back to an A100's peak; the metrics then leave MFU out (parallax_titan.metrics).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import types

import torch

_installed = False


class _CPUProperties:
    def __init__(self):
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        self.total_memory = pages * os.sysconf("SC_PAGE_SIZE") if pages else 1 << 34
        self.name = platform.processor() or "cpu"
        self.multi_processor_count = os.cpu_count() or 1


def _peak_rss_stats() -> dict[str, int]:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return {"active_bytes.all.peak": peak, "reserved_bytes.all.peak": peak}


def _make_cpu_device_module() -> types.ModuleType:
    m = types.ModuleType("parallax_titan_cpu_device")
    for name in dir(torch.cpu):  # synchronize, is_available, Stream, device_count, ...
        if not name.startswith("__"):
            setattr(m, name, getattr(torch.cpu, name))
    m.set_device = lambda device=None: None
    m.current_device = lambda: 0
    m.device_count = lambda: 1
    m.get_device_name = lambda device=None: f"CPU ({_CPUProperties().name})"
    m.get_device_properties = lambda device=None: _CPUProperties()
    m.memory_stats = lambda device=None: _peak_rss_stats()
    m.reset_peak_memory_stats = lambda device=None: None
    m.empty_cache = lambda: None
    m.set_stream = lambda stream: None
    m.manual_seed = torch.manual_seed
    m.manual_seed_all = torch.manual_seed
    return m


def install() -> None:
    """Make torch report "cpu" as the accelerator. Call before importing torchtitan."""
    global _installed
    if _installed:
        return
    loaded = [name for name in sys.modules if name.startswith("torchtitan")]
    if loaded:
        raise RuntimeError(
            "parallax_titan.cpu_shim.install() must run before torchtitan is imported "
            f"(already imported: {sorted(loaded)[:3]}...); launch with `python -m parallax_titan.train`"
        )
    cpu_module = _make_cpu_device_module()
    original_get_module = torch._utils._get_device_module
    torch._utils._get_available_device_type = lambda: "cpu"
    torch._utils._get_device_module = (
        lambda device_type: cpu_module if device_type == "cpu" else original_get_module(device_type)
    )
    _installed = True
    patch_torchtitan()


def patch_torchtitan() -> None:
    import torchtitan.distributed.utils as dist_utils

    def set_pg_timeouts(timeout, parallel_dims):
        torch.distributed.barrier()
        groups = [m.get_group() for m in parallel_dims.get_all_one_dimensional_meshes().values()]
        for group in groups + [None]:
            torch.distributed.distributed_c10d._set_pg_timeout(timeout, group)

    dist_utils.set_pg_timeouts = set_pg_timeouts

    import torchtitan.tools.utils as tt_utils

    gpu_peak_flops = tt_utils.get_peak_flops

    def get_peak_flops(device_name: str) -> float:
        return float("nan") if device_name.startswith("CPU") else gpu_peak_flops(device_name)

    tt_utils.get_peak_flops = get_peak_flops

    from torch.distributed.fsdp import FSDPModule
    from torchtitan.models.llama4.infra import parallelize as llama4_parallelize

    disable_division = llama4_parallelize.disable_fsdp_gradient_division

    def disable_division_with_sum_collectives(model):
        disable_division(model)
        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_force_sum_reduction_for_comms(True)

    llama4_parallelize.disable_fsdp_gradient_division = disable_division_with_sum_collectives


def installed() -> bool:
    return _installed
