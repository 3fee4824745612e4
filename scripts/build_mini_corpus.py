"""Assemble the mini ladder's English corpus from Debian documentation packages.

    python scripts/build_mini_corpus.py --out ./data/mini_text [--debs ./data/debs]
    python scripts/build_mini_corpus.py --out ./data/mini_text --match docs/runs/<date>/mini_text_PROVENANCE.json
    python scripts/prepare_data.py --source ./data/mini_text/train --validation-source ./data/mini_text/validation \
        --tokenizer ./assets/Qwen3-0.6B --out ./data/mini_corpus

No registry ships a large web-text sample; Debian's documentation packages are the largest clean,
redistributable English prose reachable from a package registry here. Each package is fetched with
`apt-get download` (or read from --debs), unpacked with `dpkg-deb -x`, and each documentation page
becomes one document: reStructuredText sources as they are, POD and HTML reduced to their text. Pages
shorter than --min-chars are dropped, exact duplicates once. Whole packages are held out for
validation (by default the PostgreSQL manual), so held-out text comes from other sources.

Output: <out>/{train,validation}/part-*.parquet in the Ultra-FineWeb layout (columns content, source)
that the data pipeline reads, and <out>/PROVENANCE.json: each package's version, the licences its
copyright file declares, documents and characters.

Debian's point releases replace some packages, so two builds months apart can differ (docs/results.md,
"Two corpus builds"). --match rebuilds a recorded corpus: each package at the exact .deb its PROVENANCE.json
names (from --debs, else `apt-get download <package>=<version>`), and an error, naming the package, when that
version cannot be had or when the rebuilt documents and characters differ from the record.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Source:
    name: str
    package: str
    pattern: str  # glob inside the unpacked package
    kind: str  # rst | pod | html


SOURCES = (
    Source("linux-kernel-docs", "linux-doc-6.1", "usr/share/doc/linux-doc-6.1/html/_sources/**/*.rst.txt", "rst"),
    Source("python-docs", "python3.11-doc", "usr/share/doc/python3.11/html/_sources/**/*.rst.txt", "rst"),
    Source("perl-docs", "perl-doc", "usr/share/perl/*/pod/*.pod", "pod"),
    Source("django-docs", "python-django-doc", "usr/share/doc/python-django-doc/html/**/*.html", "html"),
    Source("sqlalchemy-docs", "python-sqlalchemy-doc", "usr/share/doc/python-sqlalchemy-doc/html/**/*.html", "html"),
    Source("scipy-docs", "python-scipy-doc", "usr/share/doc/python-scipy-doc/html/**/*.html", "html"),
    Source("sphinx-docs", "sphinx-doc", "usr/share/doc/sphinx-doc/html/_sources/**/*.rst.txt", "rst"),
    Source("debian-handbook", "debian-handbook", "usr/share/doc/debian-handbook/html/en-US/*.html", "html"),
    Source("pandas-docs", "python-pandas-doc", "usr/share/doc/python-pandas-doc/html/_sources/**/*.rst.txt", "rst"),
    Source("sklearn-docs", "python-sklearn-doc", "usr/share/doc/python-sklearn-doc/html/_sources/**/*.rst.txt", "rst"),
    Source("astropy-docs", "python-astropy-doc", "usr/share/doc/python-astropy-doc/html/_sources/**/*.rst.txt", "rst"),
    Source("sympy-docs", "python-sympy-doc", "usr/share/doc/python-sympy-doc/html/**/*.html", "html"),
    Source("octave-manual", "octave-doc", "usr/share/doc/octave/octave.html/*.html", "html"),
    Source("postgresql-docs", "postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html/*.html", "html"),
)
VALIDATION = ("postgresql-docs",)
# what PROVENANCE.json counts for each source; --match compares them with the record's
COUNTED = ("split", "documents", "characters", "duplicates_dropped")


class _TextOfHTML(HTMLParser):
    """Visible text of a documentation page, without scripts, styles, navigation, headers, footers
    and Sphinx sidebars: a skipped element is skipped up to its own closing tag."""

    SKIP = {"script", "style", "nav", "header", "footer", "head"}
    BLOCK = {"p", "div", "li", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "br", "dt", "dd", "section", "table"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_tag: str | None = None
        self.skip_depth = 0

    def handle_starttag(self, tag, attrs):
        if self.skip_tag:
            self.skip_depth += tag == self.skip_tag
            return
        a = dict(attrs)
        if tag in self.SKIP or a.get("role") == "navigation" or "sphinxsidebar" in (a.get("class") or ""):
            self.skip_tag, self.skip_depth = tag, 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if self.skip_tag:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip_tag:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _TextOfHTML()
    parser.feed(markup)
    return _tidy(html.unescape("".join(parser.parts)))


_POD_CODES = re.compile(r"[BICFSLXEZ]<+\s*(.*?)\s*>+", re.S)


def pod_text(source: str) -> str:
    """POD to text: command paragraphs become headings, formatting codes their content."""
    out = []
    for block in re.split(r"\n\s*\n", source):
        if block.startswith("=head"):
            out.append(block.split(None, 1)[1] if " " in block else "")
        elif block.startswith("=item"):
            out.append("* " + (block.split(None, 1)[1] if " " in block else ""))
        elif block.startswith("="):
            continue  # =pod, =over, =back, =cut, =begin, ...
        else:
            out.append(block)
    text = "\n\n".join(out)
    for _ in range(3):  # nested codes
        text = _POD_CODES.sub(lambda m: m.group(1).split("|")[-1], text)
    return _tidy(text)


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


EXTRACT = {"rst": _tidy, "pod": pod_text, "html": html_text}


def licences(root: Path, package: str) -> list[str]:
    """The License: names a DEP-5 copyright file declares (deduplicated, in order)."""
    path = root / "usr" / "share" / "doc" / package / "copyright"
    if not path.is_file():
        return ["(no copyright file)"]
    names = re.findall(r"^License:\s*(.+)$", path.read_text(errors="replace"), re.M)
    return list(dict.fromkeys(n.strip() for n in names)) or ["(not machine-readable: see its copyright file)"]


def fetch(package: str, debs: Path, pinned: str | None = None) -> Path:
    """The package's .deb in the debs cache, downloaded if missing; `pinned` (a .deb file name from a
    PROVENANCE.json) asks for exactly that version."""
    if pinned is not None:
        path = debs / pinned
        if not path.is_file():
            version = pinned.split("_")[1].replace("%3a", ":")  # <package>_<version>_<arch>.deb, epoch's ':' escaped
            proc = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=debs, capture_output=True,
                                  text=True)
            if not path.is_file():
                raise SystemExit(
                    f"--match: {package} {version} ({pinned}) is not in {debs} and apt-get could not download it "
                    f"({(proc.stderr or proc.stdout).strip()[-300:]}). Debian's mirrors keep only the current version "
                    f"of a release's packages: put that .deb in --debs to rebuild the recorded corpus")
        return path
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        raise SystemExit(f"apt-get download {package} produced no .deb in {debs}")
    return found[-1]


def documents(source: Source, root: Path, min_chars: int):
    for path in sorted(root.glob(source.pattern)):
        text = EXTRACT[source.kind](path.read_text(encoding="utf-8", errors="replace"))
        if len(text) >= min_chars:
            yield str(path.relative_to(root)), text


def build(out: Path, debs: Path, min_chars: int = 500, sources=None, validation=None,
          docs_per_file: int = 2000, match: dict | None = None) -> dict:
    """Fetch, extract and write the corpus (sources and validation: SOURCES and VALIDATION unless given);
    `match` (a PROVENANCE.json's record) pins each package's .deb and is compared with what was built."""
    sources = SOURCES if sources is None else sources
    validation = VALIDATION if validation is None else validation
    debs.mkdir(parents=True, exist_ok=True)
    pinned = {}
    if match is not None:
        recorded = {s["name"]: s for s in match["sources"]}
        if set(recorded) != {s.name for s in sources} or match["min_chars"] != min_chars:
            raise SystemExit(f"--match: the record's sources {sorted(recorded)} and min_chars {match['min_chars']} "
                             f"are not this builder's {sorted(s.name for s in sources)} and {min_chars}")
        pinned = {name: s["deb"] for name, s in recorded.items()}
    provenance, seen = [], set()
    buffers: dict[str, list[dict]] = {"train": [], "validation": []}
    counts = {"train": 0, "validation": 0}

    def flush(split: str, final: bool = False):
        rows = buffers[split]
        while rows and (final or len(rows) >= docs_per_file):
            chunk, buffers[split] = rows[:docs_per_file], rows[docs_per_file:]
            rows = buffers[split]
            (out / split).mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(chunk), out / split / f"part-{counts[split]:05d}.parquet")
            counts[split] += 1

    for source in sources:
        deb = fetch(source.package, debs, pinned.get(source.name))
        split = "validation" if source.name in validation else "train"
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
            n_docs = n_chars = dupes = 0
            for rel, text in documents(source, root, min_chars):
                digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
                if digest in seen:
                    dupes += 1
                    continue
                seen.add(digest)
                buffers[split].append({"content": text, "source": f"{source.name}:{rel}"})
                n_docs += 1
                n_chars += len(text)
                flush(split)
            provenance.append({"name": source.name, "package": source.package, "deb": deb.name,
                               "licences": licences(root, source.package), "split": split,
                               "documents": n_docs, "characters": n_chars, "duplicates_dropped": dupes})
        print(f"{source.name:18s} {split:10s} {n_docs:6,d} docs {n_chars / 1e6:7.1f}M chars  ({deb.name})", flush=True)
    for split in buffers:
        flush(split, final=True)
    record = {"builder": "scripts/build_mini_corpus.py", "min_chars": min_chars, "sources": provenance}
    (out / "PROVENANCE.json").write_text(json.dumps(record, indent=1) + "\n")
    if match is not None:
        differ = [f"{s['name']} {f}: {recorded[s['name']][f]} recorded, {s[f]} built"
                  for s in provenance for f in COUNTED if recorded[s["name"]][f] != s[f]]
        if differ:
            raise SystemExit(f"--match: the same packages built another corpus (written to {out}; the extraction "
                             f"code has changed?):\n  " + "\n  ".join(differ))
    return record


def read_record(path: Path) -> dict:
    """A PROVENANCE.json this builder wrote (for --match), or an error naming what it lacks."""
    if not path.is_file():
        raise SystemExit(f"--match {path}: no such file")
    try:
        record = json.loads(path.read_text())
        needed = ("name", "deb", *COUNTED)
        missing = ["min_chars"] * ("min_chars" not in record) + [
            f"sources[{i}].{f}" for i, source in enumerate(record["sources"]) for f in needed if f not in source]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SystemExit(f"--match {path}: not a PROVENANCE.json of this builder ({err!r})") from err
    if missing:
        raise SystemExit(f"--match {path}: not a PROVENANCE.json of this builder, it lacks {missing}")
    return record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--debs", type=Path, default=Path("./data/debs"), help="cache of downloaded .deb files")
    parser.add_argument("--min-chars", type=int, default=None, help="default: 500, or --match's record's")
    parser.add_argument("--match", type=Path, default=None, metavar="PROVENANCE_JSON",
                        help="rebuild the corpus this PROVENANCE.json records: the same .deb of each package, "
                             "and an error if the result differs")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"{args.out} exists and is not empty; choose a new folder")
    match = read_record(args.match) if args.match is not None else None
    min_chars = args.min_chars if args.min_chars is not None else (match or {}).get("min_chars", 500)
    return build(args.out, args.debs, min_chars, match=match)


if __name__ == "__main__":
    main()
