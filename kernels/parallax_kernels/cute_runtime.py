"""Run CuTe DSL kernels from cubins without the DSL: ptx parameter lists, a ctypes CUDA-driver launcher,
TMA descriptors (CUtensorMap) built with the driver's cuTensorMapEncodeTiled, and where artefacts live.

Shared by the decode kernel (parallax_decode/cute_launch.py) and the attention forward
(parallax/cute_launch.py): each compiles its variants ahead of time (scripts/build_kernels.py, no GPU
needed) into `<name>.cubin` + `<name>.json` artefacts that a GPU host without nvidia-cutlass-dsl loads.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import struct
import threading
from dataclasses import asdict
from pathlib import Path

ARCH = "sm_90a"
ARTEFACT_ENV = "PARALLAX_KERNEL_DIR"


def default_artefact_dir() -> Path:
    env = os.environ.get(ARTEFACT_ENV)
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "parallax_titan" / "kernels"


def default_dir_inputs() -> tuple:
    """The variables default_artefact_dir reads: a cache of loaded kernels keys on them, so that changing one
    loads from the folder it names."""
    return tuple(os.environ.get(name) for name in (ARTEFACT_ENV, "XDG_CACHE_HOME", "HOME"))


def ptx_params(ptx: str, kernel_name: str) -> list[str]:
    """Parameter types of `kernel_name`'s .entry in PTX, in order: scalars as u64, u32, f32, ...; by-value
    byte arrays (a CUtensorMap, a struct of sizes) as b8[N]."""
    start = ptx.find(f".entry {kernel_name}(")
    if start < 0:
        raise ValueError(f"kernel {kernel_name} not found in the PTX")
    body = ptx[start:ptx.index(")", start)]
    types = []
    for decl in re.findall(r"\.param\s+([^,]*)", body):
        array = re.search(r"\.b8\s+\S+?\[(\d+)\]", decl)
        types.append(f"b8[{array.group(1)}]" if array else re.match(r"\.(\w+)", decl).group(1))
    return types


_STRUCT_CODES = {"u64": "Q", "u32": "I", "f32": "f"}


class ParamPacker:
    """cuLaunchKernel's kernelParams for one kernel's parameter list (ptx_params' types): one struct.Struct packs
    the values into a buffer, and an array holds the addresses of their slots. Both are made once per thread and
    reused: the driver copies the values during the launch call, and a launch is on the host's critical path
    (the GPU idles while a short kernel's launch is slower than the work queued before it)."""

    def __init__(self, types: list[str]):
        self.types = list(types)
        fmt, offset, self.offsets, self.byte_params = "<", 0, [], []
        for i, t in enumerate(self.types):
            if t.startswith("b8["):  # bytes passed by value (a CUtensorMap, a struct of sizes)
                size = int(t[3:-1])
                code, align = f"{size}s", 8
                self.byte_params.append((i, size, t))
            elif t in _STRUCT_CODES:
                code = _STRUCT_CODES[t]
                size = align = struct.calcsize("<" + code)
            else:
                raise ValueError(f"kernel parameter type {t} is not one the launcher packs (b8[N], u64, u32, f32)")
            pad = -offset % align
            fmt += f"{pad}x{code}"
            offset += pad
            self.offsets.append(offset)
            offset += size
        self.struct = struct.Struct(fmt)
        self._local = threading.local()

    def pack(self, args: list) -> ctypes.Array:
        if len(args) != len(self.types):
            raise ValueError(f"kernel takes {len(self.types)} parameters; got {len(args)}")
        for i, size, t in self.byte_params:  # struct would pad or cut them silently
            if len(args[i]) != size:
                raise ValueError(f"a {t} parameter takes {size} bytes; got {len(args[i])}")
        local = self._local
        if not hasattr(local, "buffer"):
            local.buffer = ctypes.create_string_buffer(max(self.struct.size, 1))
            base = ctypes.addressof(local.buffer)
            local.pointers = (ctypes.c_void_p * len(self.offsets))(*[base + o for o in self.offsets])
        try:
            self.struct.pack_into(local.buffer, 0, *args)
        except struct.error as err:
            raise ValueError(f"kernel parameters {self.types}: {err}") from None
        return local.pointers


class _Driver:
    """The few CUDA driver calls needed, through ctypes on libcuda."""

    def __init__(self):
        self.lib = ctypes.CDLL("libcuda.so.1")

    def check(self, result: int, what: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(result, ctypes.byref(name))
            raise RuntimeError(f"CUDA driver call {what} failed: {name.value.decode() if name.value else result}")


_DRIVER: _Driver | None = None


def _driver() -> _Driver:
    global _DRIVER
    if _DRIVER is None:
        _DRIVER = _Driver()
    return _DRIVER


CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION = 4


class _LaunchAttributeValue(ctypes.Union):  # CUlaunchAttributeValue: a 64-byte union
    _fields_ = [("pad", ctypes.c_char * 64), ("cluster_dim", ctypes.c_uint * 3)]


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: the id, padded to 8 bytes, then the value
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", _LaunchAttributeValue)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig, for cuLaunchKernelEx
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("shared_mem_bytes", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


def cluster_launch_config(grid, block, smem: int, stream: int, cluster: int) -> tuple[_LaunchConfig, _LaunchAttribute]:
    """cuLaunchKernelEx's config for a launch in clusters of `cluster` CTAs along x (the attribute is
    returned too: the config points at it, so it must stay alive through the call)."""
    attr = _LaunchAttribute(id=CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION)
    attr.value.cluster_dim[:] = [cluster, 1, 1]
    config = _LaunchConfig(shared_mem_bytes=smem, stream=stream, attrs=ctypes.pointer(attr), num_attrs=1)
    config.grid[:] = list(grid)
    config.block[:] = list(block)
    return config, attr


class CubinKernel:
    """One kernel of a cubin, loaded into the current device's primary context (torch's). `origin` names where
    the cubin came from (its artefact), for the errors of the driver calls that load and launch it."""

    def __init__(self, cubin: bytes, meta: dict, origin: str = "a cubin"):
        import torch

        torch.cuda.init()
        drv = _driver()
        ctx = ctypes.c_void_p()
        drv.check(drv.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        if not ctx.value:  # torch has not touched this thread's context yet
            torch.zeros(1, device="cuda")
            drv.check(drv.lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
        self.origin = origin
        self._cubin = ctypes.create_string_buffer(cubin, len(cubin))
        self.module = ctypes.c_void_p()
        drv.check(drv.lib.cuModuleLoadData(ctypes.byref(self.module), self._cubin), f"cuModuleLoadData({origin})")
        self.func = ctypes.c_void_p()
        drv.check(drv.lib.cuModuleGetFunction(ctypes.byref(self.func), self.module, meta["kernel"].encode()),
                  f"cuModuleGetFunction({meta['kernel']} of {origin})")
        self.smem = int(meta["smem_bytes"])
        self.block = tuple(meta["block"])
        self.params = list(meta["params"])
        self.packer = ParamPacker(self.params)
        self.cluster = int(meta["variant"].get("cluster", 0))  # a cluster kernel must be launched as one
        self._ctas_per_sm: int | None = None
        if self.cluster > 8:  # clusters above the portable 8 CTAs need the kernel's opt-in
            CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 14
            drv.check(drv.lib.cuFuncSetAttribute(self.func, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
                      "cuFuncSetAttribute(non-portable cluster size)")
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
        drv.check(drv.lib.cuFuncSetAttribute(self.func, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                             self.smem), "cuFuncSetAttribute(max dynamic smem)")

    def ctas_per_sm(self) -> int:
        """How many CTAs of this kernel one SM holds at once (registers and shared memory), from the driver
        (asked once: it depends on the kernel alone)."""
        if self._ctas_per_sm is None:
            drv = _driver()
            n = ctypes.c_int()
            drv.check(drv.lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(
                ctypes.byref(n), self.func, ctypes.c_int(self.block[0]), ctypes.c_size_t(self.smem)),
                "cuOccupancyMaxActiveBlocksPerMultiprocessor")
            self._ctas_per_sm = n.value
        return self._ctas_per_sm

    def launch(self, grid: tuple[int, int, int], args: list, stream: int) -> None:
        self.prepared(grid)(args, stream)

    def prepared(self, grid: tuple[int, int, int]):
        """A launch of this kernel over `grid`, taking (args, stream): the driver's call with its grid, block
        and shared-memory arguments made once, for a launcher that calls it with one grid again and again."""
        drv, pack, func = _driver(), self.packer.pack, self.func
        what = f"of {self.origin} (grid {tuple(grid)}, block {self.block}, {self.smem} bytes of shared memory)"
        if self.cluster:
            launch_ex, call = drv.lib.cuLaunchKernelEx, f"cuLaunchKernelEx {what}, clusters of {self.cluster}"

            def launch_cluster(args: list, stream: int) -> None:
                # a config a call, so that launches on two threads do not share its stream field (_attr: the
                # attribute the config points at, alive through the call)
                config, _attr = cluster_launch_config(grid, self.block, self.smem, stream, self.cluster)
                drv.check(launch_ex(ctypes.byref(config), func, pack(args), None), call)

            return launch_cluster
        dims = [ctypes.c_uint(x) for x in (*grid, *self.block, self.smem)]
        launch_kernel, call = drv.lib.cuLaunchKernel, f"cuLaunchKernel {what}"

        def launch(args: list, stream: int) -> None:
            drv.check(launch_kernel(func, *dims, ctypes.c_void_p(stream), pack(args), None), call)

        return launch


def raw_stream(device) -> int:
    """The current CUDA stream of `device` (a torch.device) as the driver's handle: what
    torch.cuda.current_stream(device).cuda_stream is, without making a Stream object (Inductor's launches read it
    the same way); launches sit on the host's critical path."""
    import torch

    return torch._C._cuda_getCurrentRawStream(device.index if device.index is not None else torch.cuda.current_device())


def dsl_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cutlass") is not None and importlib.util.find_spec("cutlass.cute") is not None


def write_artefact(folder: Path, variant, cubin: bytes, ptx: str, kernel_name: str, dsl_version: str,
                   source: str) -> Path:
    """`<variant.name>.cubin` and, beside it, the record its launcher checks before running it: the variant,
    the kernel's symbol and PTX parameter list, block and shared memory, the DSL version and the source hash."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {
        "variant": asdict(variant), "kernel": kernel_name, "params": ptx_params(ptx, kernel_name),
        "block": [variant.num_threads, 1, 1], "smem_bytes": variant.smem_bytes, "arch": ARCH,
        "nvidia_cutlass_dsl": dsl_version, "source": source,
    }
    # each file appears whole (written under a name of this process's, then renamed), the record last: ranks
    # that compile a missing variant at once, and readers beside them, never see a partial file
    _write_atomic(folder / f"{variant.name}.cubin", cubin)
    _write_atomic(folder / f"{variant.name}.json", (json.dumps(meta, indent=1) + "\n").encode())
    return folder / f"{variant.name}.json"


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


ARTEFACT_KEYS = ("variant", "kernel", "params", "block", "smem_bytes", "source")


def read_artefact(folder: Path, variant, *, source: str, params: list[str], kernel_file: str,
                  build_command: str) -> tuple[dict, bytes] | None:
    """The variant's record and cubin from `folder` (None when it has none), refused when they do not fit this
    checkout: another variant, another source (`source` hashes `kernel_file` and its variant module) or another
    parameter list; each error names `build_command`."""
    meta_path, cubin_path = folder / f"{variant.name}.json", folder / f"{variant.name}.cubin"
    if not meta_path.exists():
        return None
    rebuild = f"rebuild it with {build_command}"
    if not cubin_path.exists():
        raise FileNotFoundError(f"{meta_path} has no cubin beside it ({cubin_path}); {rebuild}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not a readable artefact record ({err}); {rebuild}") from None
    missing = [k for k in ARTEFACT_KEYS if k not in meta] if isinstance(meta, dict) else list(ARTEFACT_KEYS)
    if missing:
        raise ValueError(f"{meta_path} lacks {missing}; {rebuild}")
    if meta.get("variant") != asdict(variant):
        raise ValueError(f"{meta_path} describes {meta.get('variant')}, not {asdict(variant)}; {rebuild}")
    if meta.get("source") != source:
        raise ValueError(f"{meta_path} was built from another version of {kernel_file} (source {meta.get('source')}, "
                         f"this checkout {source}): {rebuild}")
    if meta.get("params") != params:
        raise ValueError(f"{meta_path}: kernel parameters {meta.get('params')} differ from this launcher's {params}: "
                         f"{rebuild}")
    return meta, cubin_path.read_bytes()


def compile_cubin(kernel, args: list, name: str, smem_bytes: int | None = None) -> tuple[bytes, str, str]:
    """Compile a CuTe DSL kernel object for sm_90a (without a GPU when CUTE_DSL_ARCH=sm_90a is set before cutlass
    is imported) with placeholder `args` of its launch signature. Returns (cubin, ptx, kernel symbol).
    `smem_bytes`: what the launcher will ask the driver for, which must be the size of the shared storage the
    kernel declared while it was traced (`kernel.shared_storage`)."""
    import tempfile

    import cuda.bindings.driver as cuda
    import cutlass.cute as cute

    with tempfile.TemporaryDirectory() as dump:
        compiled = cute.compile(kernel, *args, cuda.CUstream(0), options=f"--keep-ptx --keep-cubin --dump-dir={dump}")
        cubin, ptx = compiled.artifacts.CUBIN, compiled.artifacts.PTX
    (symbol,) = compiled.kernel_info.keys()
    if not isinstance(cubin, bytes) or not cubin.startswith(b"\x7fELF"):
        raise RuntimeError(f"CuTe DSL returned no cubin for {name}")
    if smem_bytes is not None and kernel.shared_storage.size_in_bytes() != smem_bytes:
        raise RuntimeError(f"{name}: the kernel's shared storage is {kernel.shared_storage.size_in_bytes()} bytes, "
                           f"its variant's smem_bytes says {smem_bytes}")
    return cubin, ptx, symbol


def dsl_dtype(name: str):
    """The DSL type of a variant's 16-bit dtype name ("bfloat16" or "float16", the names the variants check)."""
    import cutlass

    return cutlass.BFloat16 if name == "bfloat16" else cutlass.Float16


def gmem_pointer(dtype, align: int):
    """A placeholder global-memory pointer for compile_cubin's arguments."""
    import cutlass.cute as cute

    return cute.runtime.make_ptr(dtype, 0, cute.AddressSpace.gmem, assumed_align=align)


def load_kernel(variant, folder: Path | None, *, loaded: dict, read, write, compile_module: str, what: str,
                build_command: str) -> "CubinKernel":
    """The variant's kernel on the current device, cached in `loaded`: from its artefact in `folder` (default:
    $PARALLAX_KERNEL_DIR or ~/.cache/parallax_titan/kernels) through `read`, else compiled now with the DSL
    (`compile_module`.compile_variant) and saved there through `write`. A launcher calls this for every launch:
    a loaded kernel is found by the folder as given and the variable naming the default, without building paths."""
    import torch

    key = (variant, None if folder is None else str(folder), *default_dir_inputs(), torch.cuda.current_device())
    kernel = loaded.get(key)
    if kernel is not None:
        return kernel
    import importlib

    folder = default_artefact_dir() if folder is None else Path(folder)
    found = read(folder, variant)
    if found is None:
        if not dsl_installed():
            raise RuntimeError(
                f"no CuTe {what} kernel {variant.name} in {folder} and nvidia-cutlass-dsl is not installed to "
                f"compile it: run `python {build_command.format(folder=folder)}` on any machine with the package "
                f"(no GPU needed) and copy the folder here, or set {ARTEFACT_ENV}")
        from importlib.metadata import version

        cubin, ptx, name = importlib.import_module(compile_module).compile_variant(variant)
        write(folder, variant, cubin, ptx, name, version("nvidia-cutlass-dsl"))
        found = read(folder, variant)
    meta, cubin = found
    loaded[key] = CubinKernel(cubin, meta, origin=str(folder / f"{variant.name}.cubin"))
    return loaded[key]


def source_hash(*files: Path) -> str:
    """Hash of a kernel's source files and of this module's helpers that shape every build (compile_cubin,
    dsl_dtype, gmem_pointer): an artefact built from other source is refused, not run."""
    import inspect

    digest = hashlib.sha256()
    for path in files:
        digest.update(Path(path).read_bytes())
    for helper in (compile_cubin, dsl_dtype, gmem_pointer):
        digest.update(inspect.getsource(helper).encode())
    return digest.hexdigest()[:16]


def sm90_reason(x, what: str) -> str | None:
    """Why tensors like x cannot run an sm_90a kernel here (None: they can)."""
    import torch

    if x.device.type != "cuda":
        return f"tensors are on {x.device.type}; {what} needs a Hopper GPU"
    major, minor = torch.cuda.get_device_capability(x.device)
    if (major, minor) != (9, 0):
        return f"{what} is built for sm_90a (Hopper); this GPU is sm_{major}{minor}"
    return None


# ---- TMA descriptors ----------------------------------------------------------------------------
# CUtensorMapDataType, CUtensorMapSwizzle, CUtensorMapL2promotion (cuda.h)
TMA_DTYPES = {"float16": 6, "bfloat16": 9}
TMA_SWIZZLE_128B = 3
TMA_L2_PROMOTION_128B = 2


# descriptors depend on the address and shape alone, and torch's caching allocator tends to give a training step's
# tensors the same addresses step after step; a step needs one per attention input, layer and pass
_TMA_CACHE: dict[tuple, bytes] = {}
_TMA_CACHE_SIZE = 8192
_TMA_LOCK = threading.Lock()  # the backward runs on autograd's thread, beside the forward's


def encode_tma_tiled(dtype: str, address: int, dims: list[int], strides_bytes: list[int], box: list[int],
                     swizzle: int = TMA_SWIZZLE_128B) -> bytes:
    """A 128-byte CUtensorMap for a tiled TMA copy: `dims` innermost first (the innermost dense),
    `strides_bytes` of the outer dims, `box` the tile each copy moves; out-of-bounds elements read as
    zeros. Made by the driver (cuTensorMapEncodeTiled), no DSL needed."""
    rank = len(dims)
    if len(box) != rank or len(strides_bytes) != rank - 1:
        raise ValueError(f"TMA descriptor: {rank} dims need {rank} box sizes and {rank - 1} strides")
    if address % 16 or any(s % 16 for s in strides_bytes):
        raise ValueError(f"TMA descriptor: the address and every stride must be multiples of 16 bytes; got address "
                         f"{address:#x}, strides {list(strides_bytes)} bytes (dims {list(dims)}, {dtype})")
    key = (dtype, address, tuple(dims), tuple(strides_bytes), tuple(box), swizzle)
    found = _TMA_CACHE.get(key)  # (one lookup: another thread may evict the key in between two)
    if found is not None:
        return found
    drv = _driver()
    tmap = (ctypes.c_uint8 * 128)()
    u64s, u32s = ctypes.c_uint64 * rank, ctypes.c_uint32 * rank
    drv.check(drv.lib.cuTensorMapEncodeTiled(
        ctypes.byref(tmap), ctypes.c_int(TMA_DTYPES[dtype]), ctypes.c_uint32(rank), ctypes.c_void_p(address),
        u64s(*dims), (ctypes.c_uint64 * (rank - 1))(*strides_bytes), u32s(*box), u32s(*([1] * rank)),
        ctypes.c_int(0), ctypes.c_int(swizzle), ctypes.c_int(TMA_L2_PROMOTION_128B), ctypes.c_int(0),
    ), "cuTensorMapEncodeTiled")
    with _TMA_LOCK:
        if len(_TMA_CACHE) >= _TMA_CACHE_SIZE:  # the oldest goes first
            _TMA_CACHE.pop(next(iter(_TMA_CACHE)), None)
        _TMA_CACHE[key] = found = bytes(tmap)
    return found
