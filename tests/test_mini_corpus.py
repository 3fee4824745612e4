"""The mini corpus builder (scripts/build_mini_corpus.py) on locally built .deb packages, and
held-out-source validation in the shard preparation."""

import json
import shutil
import subprocess

import pytest
from conftest import stand_in_commands

from scripts.build_mini_corpus import Source, build, html_text, pod_text


def test_html_text_keeps_the_body_and_drops_navigation():
    page = ('<html><head><title>T</title><style>p{}</style></head><body><div class="sphinxsidebar"><div>Index</div>'
            '<p>side</p></div><h1>Title</h1><p>Hello &amp; <b>world</b>.</p><script>x=1</script>'
            '<div role="navigation"><a>next</a></div><p>End</p></body></html>')
    assert html_text(page) == "Title\n\nHello & world.\n\nEnd"


def test_pod_text_keeps_prose_and_code_contents():
    pod = "=head1 NAME\n\nperlgit - B<Git> and I<Perl>, see L<perlfunc/open>\n\n=over 4\n\n=item foo\n\nUse C<< $x >>.\n\n=back\n\n=cut\n"
    assert pod_text(pod) == "NAME\n\nperlgit - Git and Perl, see perlfunc/open\n\n* foo\n\nUse $x."


def make_deb(tmp_path, package, files, licence, version="1.0"):
    root = tmp_path / f"{package}-{version}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n")
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(f"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                   f"Files: *\nCopyright: t\nLicense: {licence}\n")
    for rel, text in files.items():
        (doc / rel).parent.mkdir(parents=True, exist_ok=True)
        (doc / rel).write_text(text)
    debs = tmp_path / "debs"
    debs.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", str(root), str(debs / f"{package}_{version}_all.deb")], check=True,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_build_writes_parquet_splits_with_provenance_and_prepares_held_out_shards(tmp_path):
    long = "Lists are mutable sequences of items. " * 30
    make_deb(tmp_path, "docs-a", {"html/_sources/a.rst.txt": long, "html/_sources/b.rst.txt": long,  # duplicate
                                  "html/_sources/short.rst.txt": "too short"}, "Expat")
    make_deb(tmp_path, "docs-b", {"html/page.html": f"<html><body><p>{long.replace('Lists', 'Tables')}</p></body></html>"},
             "PostgreSQL")
    sources = (Source("a", "docs-a", "usr/share/doc/docs-a/html/_sources/**/*.rst.txt", "rst"),
               Source("b", "docs-b", "usr/share/doc/docs-b/html/*.html", "html"))
    record = build(tmp_path / "text", tmp_path / "debs", min_chars=200, sources=sources, validation=("b",))
    a, b = record["sources"]
    assert (a["documents"], a["duplicates_dropped"], a["licences"], a["split"]) == (1, 1, ["Expat"], "train")
    assert (b["documents"], b["licences"], b["split"]) == (1, ["PostgreSQL"], "validation")
    assert json.loads((tmp_path / "text" / "PROVENANCE.json").read_text())["sources"][1]["package"] == "docs-b"

    from parallax_titan.data import EMBEDDED_TOKENIZER
    from parallax_titan.data.prepare import prepare

    manifest = prepare(str(tmp_path / "text" / "train"), "en", EMBEDDED_TOKENIZER, tmp_path / "shards",
                       validation_source=str(tmp_path / "text" / "validation"))
    assert manifest["splits"]["train"]["num_docs"] == 1 and manifest["splits"]["validation"]["num_docs"] == 1
    assert manifest["source"]["validation_source"].endswith("validation")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_match_rebuilds_the_recorded_packages_or_says_which_it_cannot(tmp_path, monkeypatch):
    """--match takes each package at the .deb a PROVENANCE.json names, even beside a newer one, and stops
    with the package's name when that version cannot be had or the rebuilt counts differ from the record."""
    from scripts.build_mini_corpus import main

    long = "Lists are mutable sequences of items. " * 30
    make_deb(tmp_path, "docs-a", {"html/_sources/a.rst.txt": long}, "Expat")
    make_deb(tmp_path, "docs-b", {"html/page.html": f"<html><body><p>{long.upper()}</p></body></html>"}, "MIT")
    sources = (Source("a", "docs-a", "usr/share/doc/docs-a/html/_sources/**/*.rst.txt", "rst"),
               Source("b", "docs-b", "usr/share/doc/docs-b/html/*.html", "html"))
    monkeypatch.setattr("scripts.build_mini_corpus.SOURCES", sources)
    monkeypatch.setattr("scripts.build_mini_corpus.VALIDATION", ("b",))
    debs = ["--debs", str(tmp_path / "debs"), "--min-chars", "200"]
    recorded = main(["--out", str(tmp_path / "first"), *debs])
    # a point release later: docs-a 2.0 with another page; a plain build takes it, --match keeps 1.0
    make_deb(tmp_path, "docs-a", {"html/_sources/a.rst.txt": long, "html/_sources/new.rst.txt": long + "more"},
             "Expat", version="2.0")
    assert main(["--out", str(tmp_path / "later"), *debs])["sources"][0]["documents"] == 2
    record = tmp_path / "first" / "PROVENANCE.json"
    assert main(["--out", str(tmp_path / "again"), *debs, "--match", str(record)]) == recorded
    assert (tmp_path / "again" / "PROVENANCE.json").read_text() == record.read_text()

    # a recorded version that neither the cache nor apt-get has: an error naming it (apt-get stubbed offline)
    monkeypatch.setenv("PATH", stand_in_commands(
        tmp_path / "bin", {"apt-get": "echo \"E: Version '0.9' for 'docs-a' was not found\" >&2\nexit 100\n"}))
    older = json.loads(record.read_text())
    older["sources"][0]["deb"] = "docs-a_0.9_all.deb"
    (tmp_path / "older.json").write_text(json.dumps(older))
    with pytest.raises(SystemExit, match=r"docs-a 0\.9 \(docs-a_0\.9_all\.deb\) is not in .*was not found"):
        main(["--out", str(tmp_path / "older"), *debs, "--match", str(tmp_path / "older.json")])
    # the same packages but other counts (the extraction changed): an error naming the source and field
    other = json.loads(record.read_text())
    other["sources"][1]["characters"] += 1
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"b characters: \d+ recorded, \d+ built"):
        main(["--out", str(tmp_path / "other"), *debs, "--match", str(tmp_path / "other.json")])
    bad = json.loads(record.read_text())
    del bad["sources"][0]["deb"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit, match=r"bad.json: not a PROVENANCE.json of this builder, it lacks \['sources\[0\].deb'\]"):
        main(["--out", str(tmp_path / "bad"), *debs, "--match", str(tmp_path / "bad.json")])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(SystemExit, match="bad.json: not a PROVENANCE.json of this builder"):
        main(["--out", str(tmp_path / "bad"), *debs, "--match", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="min_chars 200 are not this builder's"):
        main(["--out", str(tmp_path / "x"), "--debs", str(tmp_path / "debs"), "--min-chars", "300",
              "--match", str(record)])
