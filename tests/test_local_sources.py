"""Local corpora besides WordNet: apt package descriptions, stdlib docstrings, man pages (evaluation only).

Fixture files written here (not the machine's own lists) pin the parsing of edge cases; one test per corpus reads
the real files of this machine when they exist and only checks invariants.
"""

import gzip
import hashlib
import textwrap
from pathlib import Path

import pytest

from pplx_jax.data.records import DataError
from pplx_jax.data.sources import apt, local, manpages, pydoc

STATUS = """\
Package: foo
Status: install ok installed
Version: 1.0-1
Section: games
Description: a game of foos
 Foo is a game where you collect foos. It has
 wrapped lines that are joined.
 .
 A second paragraph follows the dot line.
 .
 Features:
   * verbatim line one
   * verbatim line two

Package: libfoo1
Source: foo (1.0-1)
Version: 1.0-1
Section: libs
Description: a game of foos
 Foo is a game where you collect foos. It has
 wrapped lines that are joined.
 .
 A second paragraph follows the dot line.
 .
 Features:
   * verbatim line one
   * verbatim line two

Package: purged-thing
Status: purge ok not-installed

"""

LONG_FOO = ("Foo is a game where you collect foos. It has wrapped lines that are joined.\n\n"
            "A second paragraph follows the dot line.\n\n"
            "Features:\n  * verbatim line one\n  * verbatim line two")


def _md5(desc_lines):
  return hashlib.md5(("\n".join(desc_lines) + "\n").encode()).hexdigest()


BAR_DESC = ["tool for bars", " Bar does bars.", " .", " More about bars."]


def _packages_list():
  return (f"Package: bar\nVersion: 2\nSection: utils\nDescription: tool for bars\nDescription-md5: {_md5(BAR_DESC)}\n\n"
          "Package: baz\nVersion: 3\nSection: utils\nDescription: baz only has a short one\n"
          "Description-md5: 0123456789abcdef0123456789abcdef\n\n"
          "Package: foo\nVersion: 0.9\nSection: games\nDescription: an older foo\n\n")


def _translation():
  return f"Package: bar\nDescription-md5: {_md5(BAR_DESC)}\nDescription-en: " + "\n".join(BAR_DESC) + "\n\n"


@pytest.fixture
def apt_files(tmp_path):
  status = tmp_path / "status"
  status.write_text(STATUS)
  lists = tmp_path / "lists"
  lists.mkdir()
  with gzip.open(lists / "example.org_dists_x_main_binary-amd64_Packages.gz", "wt") as f:
    f.write(_packages_list())
  (lists / "example.org_dists_x_main_i18n_Translation-en").write_text(_translation())
  (lists / "example.org_dists_x_InRelease").write_text("not a package list\n")
  return status, lists


def test_apt_description_paragraphs_verbatim_and_translations(apt_files):
  status, lists = apt_files
  files = apt.default_files(lists, status)
  assert [f.name for f in files] == ["status", "example.org_dists_x_main_binary-amd64_Packages.gz",
                                     "example.org_dists_x_main_i18n_Translation-en"]
  stats = {}
  pkgs = {p.package: p for p in apt.read_packages(files, stats=stats)}
  assert sorted(pkgs) == ["bar", "baz", "foo", "libfoo1"]  # the purged stanza has no description
  assert pkgs["foo"].long == LONG_FOO
  assert pkgs["foo"].short == "a game of foos" and pkgs["foo"].section == "games"
  assert pkgs["foo"].path == str(status) and pkgs["foo"].line == 1  # the status stanza wins over the older list's
  assert pkgs["libfoo1"].source == "foo" and pkgs["libfoo1"].key == "foo"  # version stripped from Source:
  assert pkgs["bar"].long == "Bar does bars.\n\nMore about bars."  # filled in from Translation-en by md5
  assert pkgs["baz"].long == ""
  assert stats["packages"] == 4 and stats["with_long"] == 3
  # foo and libfoo1 share one description: one pretraining document, one short -> long pair
  assert [p.package for p in apt.unique_descriptions(list(pkgs.values()))] == ["bar", "baz", "foo"]
  pairs = list(apt.retrieval_pairs([pkgs[k] for k in sorted(pkgs)]))
  shorts = [(p["query"], p["positive"]) for p in pairs if p["kind"] == "short"]
  assert shorts == [("tool for bars", "Bar does bars.\n\nMore about bars."), ("a game of foos", LONG_FOO)]
  assert ("libfoo1", "a game of foos") in [(p["query"], p["positive"]) for p in pairs if p["kind"] == "name"]
  assert apt.pretraining_text(pkgs["baz"]) == "baz: baz only has a short one."


def test_apt_md5_is_debians(apt_files):
  # Description-md5 as apt computes it: the control file's description text with one trailing newline.
  assert apt._md5(BAR_DESC) == _md5(BAR_DESC)
  assert apt._md5(["  padded short", " long"]) == _md5(["padded short", " long"])


def test_apt_non_utf8_and_malformed_stanzas(tmp_path):
  bad = tmp_path / "status"
  bad.write_bytes(b"Package: ok1\nVersion: 1\nDescription: fine\n\n"
                  b"Package: broken\nVersion: 1\nDescription: caf\xe9 latin-1\n long\n\n"
                  b" orphan continuation\nPackage: x\n\n"
                  b"Package: ok2\nVersion: 1\nDescription: also fine\n")
  with pytest.raises(DataError, match=rf"{bad}:7: invalid UTF-8"):
    apt.read_packages([bad])
  stats = {}
  pkgs = apt.read_packages([bad], on_error="skip", stats=stats)
  assert [p.package for p in pkgs] == ["ok1", "ok2"]
  assert stats["invalid_utf8"] == 1 and stats["malformed_stanza"] == 1
  orphan = tmp_path / "orphan"
  orphan.write_bytes(b"Package: a\nVersion: 1\nDescription: x\n\n orphan\n")
  with pytest.raises(DataError, match=rf"{orphan}:5: continuation line before any field"):
    list(apt.read_stanzas(orphan))
  nofield = tmp_path / "nofield"
  nofield.write_bytes(b"Package: a\njust words\n")
  with pytest.raises(DataError, match=rf"{nofield}:2: not 'Field: value'"):
    list(apt.read_stanzas(nofield))


def test_apt_missing_files_name_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get update"):
    apt.default_files(tmp_path / "nolists", None)


def test_apt_on_this_machine():
  try:
    files = apt.default_files()
  except FileNotFoundError:
    pytest.skip("no dpkg status or apt lists on this machine")
  stats = {}
  pkgs = apt.read_packages(files, stats=stats)
  assert pkgs == sorted(pkgs, key=lambda p: p.package) and len(pkgs) == stats["packages"] > 0
  assert all(p.short and "\n" not in p.short for p in pkgs)


# ---------------------------------------------------------------------------------------------
# pydoc


@pytest.fixture
def py_tree(tmp_path):
  root = tmp_path / "lib"
  (root / "pkg").mkdir(parents=True)
  (root / "pkg" / "__init__.py").write_text('"""The pkg package.\n\nIt has modules."""\n')
  (root / "pkg" / "mod.py").write_text(textwrap.dedent('''\
      """Module docstring."""

      def public(a, b):
          """Add two numbers together.

          Returns their sum.
          """
          return a + b

      def _private():
          """Private helper, left out."""

      class Thing:
          """A thing with methods and state."""
          x = 1

          def method(self):
              """Return the value of x here."""
              def inner():
                  """Nested functions are left out."""
              return self.x
      '''))
  (root / "pkg" / "latin.py").write_bytes('# -*- coding: latin-1 -*-\ndef f():\n    """Return the café.\n    """\n'
                                          .encode("latin-1"))
  (root / "tests").mkdir()
  (root / "tests" / "__init__.py").write_text('"""Skipped: a test package."""\n')
  (root / "notapkg").mkdir()
  (root / "notapkg" / "x.py").write_text('"""No __init__: skipped."""\n')
  return root


def test_pydoc_walks_public_definitions_in_order(py_tree):
  docs = pydoc.read_docs(py_tree)
  assert [(d.qualname, d.kind) for d in docs] == [
      ("pkg", "module"), ("pkg.latin.f", "function"), ("pkg.mod", "module"), ("pkg.mod.public", "function"),
      ("pkg.mod.Thing", "class"), ("pkg.mod.Thing.method", "function")]
  by = {d.qualname: d for d in docs}
  assert by["pkg.latin.f"].docstring == "Return the café."  # PEP 263 coding honoured
  assert by["pkg.mod.public"].code == "def public(a, b):\n    return a + b"  # docstring cut out, indentation kept
  assert by["pkg.mod.Thing.method"].code.startswith("def method(self):\n    def inner():")
  assert by["pkg.mod.public"].line == 3 and by["pkg.mod.Thing"].key == "pkg.mod"
  pairs = list(pydoc.retrieval_pairs(docs))
  assert {(p["query"], p["kind"]) for p in pairs} >= {("Add two numbers together.", "code"),
                                                       ("Add two numbers together.", "doc")}
  doc_pair = [p for p in pairs if p["kind"] == "doc" and p["query"].startswith("Add")][0]
  assert doc_pair["positive"] == "Returns their sum."
  # summaries under three words ("Module docstring.", "The pkg package.") make no pair
  assert not [p for p in pairs if p["query"] in ("Module docstring.",)]
  assert pydoc.read_docs(py_tree) == docs  # deterministic


def test_pydoc_bad_files_raise_or_are_counted(py_tree):
  (py_tree / "pkg" / "broken.py").write_text("def f(:\n    pass\n")
  (py_tree / "pkg" / "bytes.py").write_bytes(b'x = 1\ny = "\xff\xfe"\n')
  with pytest.raises(DataError, match=rf"{py_tree / 'pkg' / 'broken.py'}:1: cannot parse"):
    pydoc.read_docs(py_tree)
  stats = {}
  docs = pydoc.read_docs(py_tree, on_error="skip", stats=stats)
  assert stats["syntax_error"] == 1 and stats["invalid_utf8"] == 1 and stats["files"] == 3
  assert len(docs) == 6


def test_pydoc_stdlib_on_this_machine():
  docs = pydoc.read_docs(modules=["json"])
  names = [d.qualname for d in docs]
  assert "json.dumps" in names and "json.encoder.JSONEncoder.encode" in names
  assert not any(".tests" in n or n.split(".")[-1].startswith("_") for n in names)


# ---------------------------------------------------------------------------------------------
# splits


def test_local_splits_are_by_key_and_stable():
  keys = [f"pkg{i}" for i in range(2000)]
  a = [local.split_of("apt", k, 0.1, 0) for k in keys]
  assert a == [local.split_of("apt", k, 0.1, 0) for k in keys]
  assert 0.07 < a.count("validation") / len(a) < 0.13
  # corpora are namespaced: the same key is split independently in apt and pydoc
  assert a != [local.split_of("pydoc", k, 0.1, 0) for k in keys]
  from pplx_jax.data.sources import wordnet
  assert local.split_of("wordnet", "n:02084071", 0.3, 1) == wordnet.split_of("n:02084071", 0.3, 1)


def test_prepare_local_text_and_pairs_share_the_split(apt_files, py_tree, tmp_path, monkeypatch):
  from pplx_jax.data import prepared
  from pplx_jax.stages.contrastive import prepare as pair_prepare
  from pplx_jax.stages.pretrain import prepare as text_prepare
  status, lists = apt_files
  monkeypatch.setattr(apt, "default_files", lambda *a, **k: apt.__dict__["_fixture_files"])
  apt._fixture_files = [status, *sorted(p for p in lists.iterdir() if "Release" not in p.name)]
  monkeypatch.setattr(pydoc, "stdlib_dir", lambda: py_tree)
  out = tmp_path / "data"
  d = text_prepare.prepare_local_text(out, ["apt", "pydoc"], validation_fraction=0.5, seed=3)
  assert d.name == "1.0.0" and d.parent.name == "apt_pydoc"
  texts = {}
  for split in prepared.split_sizes(d):
    src = prepared.load_split(d, split)
    for r in prepared.read_records(src, list(range(len(src)))):
      texts[prepared.as_text(r["source"])] = split
  assert texts["apt:foo"] == local.split_of("apt", "foo", 0.5, 3)
  assert texts["pydoc:pkg.mod"] == local.split_of("pydoc", "pkg.mod", 0.5, 3)
  p = pair_prepare.prepare_local_pairs(out, "apt", validation_fraction=0.5, seed=3)
  for split in prepared.split_sizes(p):
    src = prepared.load_split(p, split)
    for r in prepared.read_records(src, list(range(len(src)))):
      assert texts[prepared.as_text(r["source"])] == split  # a package's pairs sit in its text's split
  # a second call reuses; a different fraction into the same place is an error naming the dataset
  assert text_prepare.prepare_local_text(out, ["apt", "pydoc"], validation_fraction=0.5, seed=3) == d
  with pytest.raises(FileExistsError, match="apt_pydoc"):
    text_prepare.prepare_local_text(out, ["apt", "pydoc"], validation_fraction=0.2, seed=3)
  with pytest.raises(ValueError, match="sources must be distinct names"):
    text_prepare.prepare_local_text(out, ["apt", "manpages"])


# ---------------------------------------------------------------------------------------------
# man pages (evaluation only)

MAN_PAGE = r""".\" comment
.TH FOO 1 "2024" "foo 1.0" "User Commands"
.SH NAME
foo \- frobnicate the \fBbar\fR files
.SH SYNOPSIS
.B foo
[\fIOPTION\fR]... \fIFILE\fR
.SH DESCRIPTION
.PP
\fBfoo\fR reads each
.I FILE
and frobnicates it\(emcarefully \- with \(aqcare\(aq.
.TP
\fB\-v\fR
be verbose
.SH "SEE ALSO"
bar(1)
"""

MDOC_PAGE = """.Dd May 1, 2020
.Dt QUUX 8
.Os
.Sh NAME
.Nm quux
.Nd manage the quux daemon
.Sh DESCRIPTION
The
.Nm
utility starts and stops
.Xr quuxd 8
on request.
"""


def test_manpages_roff_and_mdoc(tmp_path):
  man1, man8, de = tmp_path / "man1", tmp_path / "man8", tmp_path / "de" / "man1"
  for d in (man1, man8, de):
    d.mkdir(parents=True)
  (man1 / "foo.1.gz").write_bytes(gzip.compress(MAN_PAGE.encode()))
  (man8 / "quux.8").write_text(MDOC_PAGE)
  (man1 / "alias.1.gz").write_bytes(gzip.compress(b".so man1/foo.1\n"))
  (man1 / "latin.1").write_bytes(b".SH NAME\nx \\- caf\xe9\n.SH DESCRIPTION\nword word word word word\n")
  (man1 / "gcloud_x.1").write_text(MAN_PAGE)
  (de / "foo.1").write_text(MAN_PAGE)  # translations are not read
  stats = {}
  pairs = list(manpages.read_pairs(tmp_path, stats=stats))
  assert [(p["key"], p["query"]) for p in pairs] == [("man1/foo.1", "frobnicate the bar files"),
                                                     ("man8/quux.8", "manage the quux daemon")]
  assert pairs[0]["positive"] == "foo reads each FILE and frobnicates it-carefully - with 'care'.\n\n-v be verbose" \
      .replace("\n\n", " ")
  assert pairs[1]["positive"] == "The utility starts and stops quuxd 8 on request."
  assert stats == {"redirect": 1, "invalid_utf8": 1, "excluded": 1, "pages": 2}
  assert manpages.parse_page(".SH NAME\nfoo\n") == "no_name"


def test_manpages_are_not_a_training_source():
  from pplx_jax.stages import sources
  assert "manpages" not in local.TRAIN_SOURCES
  assert not [k for k in sources.BUILTIN if "man" in k[1]]
  assert sources._builtin("pretrain", "wordnet+manpages") is None
