"""The mini corpus builder (scripts/build_mini_corpus.py) on locally built .deb packages, and
held-out-source validation in the shard preparation."""

import json
import shutil
import subprocess

import pytest

from scripts.build_mini_corpus import Source, build, html_text, pod_text


def test_html_text_keeps_the_body_and_drops_navigation():
    page = ('<html><head><title>T</title><style>p{}</style></head><body><div class="sphinxsidebar"><div>Index</div>'
            '<p>side</p></div><h1>Title</h1><p>Hello &amp; <b>world</b>.</p><script>x=1</script>'
            '<div role="navigation"><a>next</a></div><p>End</p></body></html>')
    assert html_text(page) == "Title\n\nHello & world.\n\nEnd"


def test_pod_text_keeps_prose_and_code_contents():
    pod = "=head1 NAME\n\nperlgit - B<Git> and I<Perl>, see L<perlfunc/open>\n\n=over 4\n\n=item foo\n\nUse C<< $x >>.\n\n=back\n\n=cut\n"
    assert pod_text(pod) == "NAME\n\nperlgit - Git and Perl, see perlfunc/open\n\n* foo\n\nUse $x."


def make_deb(tmp_path, package, files, licence):
    root = tmp_path / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: test\n")
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(f"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
                                   f"Files: *\nCopyright: t\nLicense: {licence}\n")
    for rel, text in files.items():
        (doc / rel).parent.mkdir(parents=True, exist_ok=True)
        (doc / rel).write_text(text)
    debs = tmp_path / "debs"
    debs.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--build", str(root), str(debs / f"{package}_1.0_all.deb")], check=True,
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
