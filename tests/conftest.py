import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's CPU interpreter. It must be chosen before any kernel
# module is imported (triton.jit reads it when it decorates).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Correctness tests need no block-size tuning (the benchmark tunes, and cross-checks fla's kernel).
os.environ.setdefault("PARALLAX_TRITON_AUTOTUNE", "0")

REPO = Path(__file__).resolve().parents[1]
OFFLINE_GPU = REPO / "scripts" / "offline_gpu"  # setup and check scripts for GPU hosts without internet access
sys.path.insert(0, str(REPO))  # scripts/ helpers are imported by some tests

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng():
    """A fresh generator per test: inputs are random, never zero, and reproducible."""
    return torch.Generator().manual_seed(1234)


def random_qkvr(rng, b, h, hkv, n, d, dtype=torch.float64, requires_grad=True):
    def make(heads):
        x = torch.randn(b, heads, n, d, generator=rng, dtype=torch.float64).to(dtype)
        return x.requires_grad_(requires_grad)

    return make(h), make(hkv), make(hkv), make(h)


def run_offline_gpu_script(name: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """bash scripts/offline_gpu/<name> in `cwd` with these environment variables added (for its argument checks;
    a PATH given here replaces the default)."""
    # the scripts call python3: this interpreter's, so that it finds the packages the tests run with
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # the scripts' knobs (TESTS, OUT, JOBS, ...) are not inherited: the suite may itself run from one of these
    # scripts, which sets them for itself, and a test must see only what it passes
    inherited = {k: v for k, v in os.environ.items() if k not in offline_gpu_script_knobs()}
    return subprocess.run(["bash", str(OFFLINE_GPU / name)], env={**inherited, "PATH": path, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=60)


@functools.cache
def offline_gpu_script_knobs() -> frozenset[str]:
    """The upper-case variables scripts/offline_gpu/*.sh read, less the shell's own and those of the machine (PATH,
    CUDA_*, ...)."""
    import re

    text = "".join(p.read_text() for p in OFFLINE_GPU.glob("*.sh"))
    names = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", text))
    return frozenset(n for n in names
                     if n not in {"PWD", "SECONDS", "PATH", "HOME", "PYTHONPATH"} and not n.startswith("CUDA_"))


def stand_in_commands(folder: Path, scripts: dict[str, str], then: str | None = None) -> str:
    """Shell scripts standing in for commands (name -> body under a #!/bin/sh line), executable in `folder`;
    returns a PATH that finds them before `then` (default: this process's PATH)."""
    folder.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + body)
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '') if then is None else then}"


DEBUG_CONFIG = REPO / "configs" / "debug_cpu.toml"


@pytest.fixture(scope="session")
def debug_checkpoint(tmp_path_factory):
    """A freshly initialised debug-parallax model (configs/debug_cpu.toml, seed 0) saved as a
    model-only DCP checkpoint: (checkpoint path, the model)."""
    from parallax_titan.inference import load_model
    from parallax_titan.model.checkpoint import save_model_dcp

    torch.manual_seed(0)
    loaded = load_model(DEBUG_CONFIG, None)
    path = tmp_path_factory.mktemp("debug_ckpt") / "step-1"
    save_model_dcp(loaded.model.state_dict(), path)
    return path, loaded.model
