"""Every TOML in configs/ loads through torchtitan's ConfigManager; paper twins differ only in
the lines that define the ablation."""

import itertools
import tomllib
from pathlib import Path

import pytest
from torchtitan.config import ConfigManager

import parallax_titan.register  # noqa: F401
from parallax_titan.model.flavors import FLAVORS, VARIANTS
from scripts.make_configs import (CPU_SWEEP_VARIANTS, MINI_SIZES, OPTIMIZERS, SEED_TWINS, SIZES, config_path, render,
                                  render_cpu_sweep)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.toml"))
RUN_IDENTITY = {"job.dump_folder", "job.description"}


def flatten(path: Path) -> dict[str, object]:
    data = tomllib.loads(path.read_text())
    return {f"{section}.{key}": value for section, body in data.items() for key, value in body.items()}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_through_torchtitan(path):
    config = ConfigManager().parse_args(["--job.config_file", str(path)])
    assert config.model.name == "parallax_qwen3"
    assert config.model.flavor in FLAVORS, f"{path.name}: unknown flavor {config.model.flavor}"
    assert hasattr(config, "parallax"), f"{path.name}: [parallax] section not merged"
    assert config.experimental.custom_import == "parallax_titan.register"


def test_one_config_per_paper_run():
    names = {p.stem for p in CONFIGS}
    expected = {f"{s}_{v}_{o}" for s in [*SIZES, *MINI_SIZES] for v in VARIANTS for o in OPTIMIZERS}
    assert expected <= names, f"missing: {sorted(expected - names)}"
    assert "debug_cpu" in names


def test_committed_configs_are_what_the_generator_writes():
    for size, variant, optimizer in itertools.product([*SIZES, *MINI_SIZES], VARIANTS, OPTIMIZERS):
        stem, text = render(size, variant, optimizer)
        committed = config_path(size, stem)
        assert committed.read_text() == text, f"{committed} was edited: rerun scripts/make_configs.py"
    for size, variant, optimizer in SEED_TWINS:
        stem, text = render(size, variant, optimizer, seed=2)
        assert config_path(size, stem).read_text() == text, f"{stem} was edited: rerun scripts/make_configs.py"
    for variant, optimizer in itertools.product(CPU_SWEEP_VARIANTS, OPTIMIZERS):
        path, text = render_cpu_sweep(variant, optimizer)
        assert path.read_text() == text, f"{path} was edited: rerun scripts/make_configs.py"


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_the_cpu_sweep_pair_differs_only_in_the_flavor(optimizer):
    _assert_twins(*(render_cpu_sweep(variant, optimizer)[0] for variant in CPU_SWEEP_VARIANTS), {"model.flavor"})


@pytest.mark.parametrize("twin", SEED_TWINS, ids="_".join)
def test_seed_twins_differ_only_in_the_seed(twin):
    size, variant, optimizer = twin
    folder = config_path(size, "x").parent
    first, second = folder / f"{size}_{variant}_{optimizer}.toml", folder / f"{size}_{variant}_{optimizer}_seed2.toml"
    _assert_twins(first, second, {"debug.seed"})
    assert (flatten(first)["debug.seed"], flatten(second)["debug.seed"]) == (1, 2)
    assert flatten(first)["job.dump_folder"] != flatten(second)["job.dump_folder"]


def _assert_twins(a: Path, b: Path, ablation_keys: set[str], ablation_section: str | None = None):
    fa, fb = flatten(a), flatten(b)
    for key in sorted(set(fa) | set(fb)):
        if key in RUN_IDENTITY or key in ablation_keys:
            continue
        if key not in fa or key not in fb:
            # a key only one twin has must belong to the ablated section (e.g. Muon's own keys)
            assert ablation_section and key.startswith(ablation_section + "."), (
                f"{a.name} vs {b.name}: {key} is set in only one of them"
            )
            continue
        assert fa[key] == fb[key], f"{a.name} vs {b.name}: {key} differs ({fa[key]!r} vs {fb[key]!r})"


@pytest.mark.parametrize("size", [*SIZES, *MINI_SIZES])
def test_twins_differ_only_in_their_ablation(size):
    folder = config_path(size, "x").parent
    for optimizer in OPTIMIZERS:
        for v1, v2 in itertools.combinations(VARIANTS, 2):
            _assert_twins(folder / f"{size}_{v1}_{optimizer}.toml", folder / f"{size}_{v2}_{optimizer}.toml", {"model.flavor"})
    for variant in VARIANTS:
        _assert_twins(
            folder / f"{size}_{variant}_muon.toml", folder / f"{size}_{variant}_adamw.toml", {"optimizer.name"}, "optimizer"
        )


def test_unknown_toml_key_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (Path(__file__).resolve().parents[1] / "configs" / "debug_cpu.toml").read_text()
        + '\n[parallax_typo]\nattention = "softmax"\n'
    )
    with pytest.raises(ValueError, match="parallax_typo"):
        ConfigManager().parse_args(["--job.config_file", str(bad)])


def test_ci_runs_the_readme_install_and_test_commands():
    root = Path(__file__).resolve().parents[1]
    readme, ci = (root / "README.md").read_text(), (root / ".ci" / "run").read_text()
    install = 'pip install torch==2.13.0 && pip install -e ".[dev]"'
    test = "python -m pytest -q"
    assert install in readme and test in readme
    ci_commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    assert install in ci_commands and test in ci_commands
