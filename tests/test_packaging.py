"""The repository's folders must never shadow an installed package, whatever the working directory.

`python -m pytest` and `python -m <module>` put the working directory first on sys.path, so a top-level
folder with an `__init__.py` (a regular package) wins over site-packages' module of the same name; a folder
without one is only a namespace portion, which a real package anywhere on sys.path beats.
"""

import importlib.metadata
import os
import subprocess
import sys

from conftest import REPO


def _installed_top_level_modules() -> dict[str, list[str]]:
    """Top-level import names of the installed distributions, other than this project."""
    modules = importlib.metadata.packages_distributions()
    return {
        name: dists for name, dists in modules.items() if not set(dists) <= {"parallax-titan", "parallax_titan"}
    }


def _repository_top_level_names() -> dict[str, str]:
    """Names importable as regular packages or modules from the repository root."""
    names = {}
    for entry in REPO.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            names[entry.name] = f"{entry.name}/__init__.py"
        elif entry.suffix == ".py":
            names[entry.stem] = entry.name
    return names


def test_no_top_level_folder_is_a_package_named_like_an_installed_module():
    installed = _installed_top_level_modules()
    clashes = {
        name: (path, installed[name]) for name, path in _repository_top_level_names().items() if name in installed
    }
    assert not clashes, (
        "these repository entries would shadow installed modules when run from the repository root "
        f"(entry, distributions): {clashes}"
    )


def test_installed_modules_named_like_repository_folders_import_from_site_packages():
    """E.g. Hugging Face's `kernels`, which transformers imports, next to this repository's kernels/ folder:
    imported from the repository root, the installed one must win."""
    installed = _installed_top_level_modules()
    folders = [e.name for e in REPO.iterdir() if e.is_dir() and not e.name.startswith(".") and e.name in installed]
    for name in folders:
        code = f"import {name}, sys; print({name}.__file__ or list({name}.__path__))"
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ""})
        assert out.returncode == 0, f"`import {name}` from the repository root failed:\n{out.stderr[-2000:]}"
        assert str(REPO) not in out.stdout, f"`import {name}` from the repository root found {out.stdout.strip()}"


def test_kernels_import_under_their_own_name():
    import parallax_kernels
    from parallax_kernels.parallax import parallax_attention

    assert parallax_attention.__module__ == "parallax_kernels.parallax"
    assert list(parallax_kernels.__path__) == [str(REPO / "kernels" / "parallax_kernels")]


TINY_QWEN3 = """
import transformers
config = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16)
model = transformers.Qwen3ForCausalLM(config)
import torch
print(model(torch.zeros(1, 3, dtype=torch.long)).logits.shape)
"""


def test_transformers_builds_a_qwen3_model_in_this_process():
    """The conversion tests build transformers models inside pytest, whose sys.path starts at the repository."""
    import torch
    import transformers

    config = transformers.Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    logits = transformers.Qwen3ForCausalLM(config)(torch.zeros(1, 3, dtype=torch.long)).logits
    assert logits.shape == (1, 3, 64)


def test_transformers_builds_a_qwen3_model_from_the_repository_root():
    """As a user running `python -m ...` or a script from the repository root (cwd first on sys.path)."""
    out = subprocess.run([sys.executable, "-c", TINY_QWEN3], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "torch.Size([1, 3, 64])" in out.stdout


def test_every_package_folder_is_listed_for_installation():
    """pyproject.toml lists the packages by hand (the kernels' folder maps to another name); a package folder left
    out imports in an editable install and is missing from a wheel."""
    import tomllib

    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {name: REPO / folder for name, folder in setup["package-dir"].items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            parts = init.parent.relative_to(root).parts
            found.add(".".join((name, *parts)))
    assert found == set(setup["packages"]), (
        f"package folders not listed: {sorted(found - set(setup['packages']))}; "
        f"listed but missing: {sorted(set(setup['packages']) - found)}"
    )
