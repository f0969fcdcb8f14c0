"""Debian's English man pages as a held-out retrieval set: the NAME line's description -> the DESCRIPTION section.

**Evaluation only: never train on man pages.** They are real English technical text that no pretraining or
contrastive source of this project reads (WordNet, apt descriptions and docstrings are different text), so a model
that ranks them well has learned something that carries over.

Pages are ``/usr/share/man/man[1-9]/*`` (optionally ``.gz``), the English ones (translations live in
``/usr/share/man/<lang>/``). Both macro packages are read:

* man(7): ``.SH NAME`` then ``name[, name...] \\- description``; ``.SH DESCRIPTION`` up to the next ``.SH``;
* mdoc(7): ``.Sh NAME`` with ``.Nm`` / ``.Nd description``; ``.Sh DESCRIPTION``.

roff is turned into plain text on a best-effort basis: requests that only format (``.PP``, ``.TP``, ``.RS``...)
break paragraphs, font macros (``.B``, ``.IR``...) keep their words, escapes (``\\fB``, ``\\-``, ``\\(aq``...) become
characters. ``.so`` redirections (aliases of another page) carry no text and are skipped. A page that is not UTF-8
or has no NAME description or DESCRIPTION text is skipped and counted by reason (``stats``).

A pair: query = the NAME description ("list directory contents"), positive = the first `max_words` words of the
DESCRIPTION section. Pages with an identical description (one page under several names) come once.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DEFAULT_DIR", "page_files", "parse_page", "read_pairs", "roff_to_text", "REASONS"]

DEFAULT_DIR = "/usr/share/man"
REASONS = ("invalid_utf8", "redirect", "no_name", "no_description")
_SECTION_DIR = re.compile(r"^man[1-9]$")

_ESCAPES = {
    "-": "-", "e": "\\", "&": "", "|": "", "^": "", "%": "", "c": "", " ": " ", "~": " ", "0": " ", "'": "'",
    "`": "`", ".": ".",
}
_NAMED = {"aq": "'", "dq": '"', "lq": '"', "rq": '"', "oq": "'", "cq": "'", "em": "-", "en": "-", "hy": "-",
          "mi": "-", "bu": "*", "co": "(c)", "rg": "(R)", "tm": "(TM)", "de": "°", "mu": "x", "<=": "<=", ">=": ">=",
          "->": "->", "<-": "<-", "ti": "~", "ha": "^", "rs": "\\", "ga": "`", "aa": "'", "sl": "/", "ba": "|",
          "pl": "+", "eq": "=", "ul": "_", "dg": "+", "bv": "|", "fm": "'", "sq": "#", "ss": "ss", "Fo": "<<",
          "Fc": ">>"}
_ESCAPE_RE = re.compile(r"""\\(?:
    f(?:\[[^\]]*\]|\(..|.)          # font
  | s[-+]?(?:\d+|\(\d\d|\[\d+\])    # size
  | \*(?:\[[^\]]*\]|\(..|.)         # string
  | \((..)                          # named character \(xx
  | \[([^\]]*)\]                    # named character \[xx]
  | [kgnmYV](?:\[[^\]]*\]|\(..|.)   # registers, colours
  | [hvwlLoDbxXNRzZ]'[^']*'         # motions and the like
  | "[^\n]*                         # comment
  | (.)                             # one-character escape
)""", re.VERBOSE)
_BREAKS = {"PP", "P", "LP", "TP", "IP", "HP", "SS", "sp", "br", "RS", "RE", "nf", "fi", "TQ", "Pp", "Bl", "El",
           "It", "Bd", "Ed", "EX", "EE", "in", "ti", "ne", "ad", "na", "hy", "nh", "UR", "UE", "ME", "MT", "ft",
           "ps", "vs", "ta", "ce", "ll", "Sx", "Dl", "PD", "Ss", "so", "de", "ds", "nr", "if", "ie", "el", "ig", "tr",
           "IX", "TH", "Dd", "Dt", "Os", "ns", "rs", "fam", "mso", "ev", "rr", "am", "als", "cflags", "lf", "\\\""}
# mdoc macros whose arguments are words of the text; the macro names themselves are dropped.
_MDOC_WORDS = re.compile(r"\b(?:Nm|Ar|Fl|Cm|Op|Oo|Oc|Xr|Pa|Ev|Va|Em|Sy|Li|Dq|Qq|Sq|Pq|Ql|Ic|Ns|No|Fa|Fn|Ft|Dv|Er|"
                         r"Ad|An|Lk|Mt|Tn|Ux|Bx|Ox|Nx|Fx|Aq|Bq|Brq|Ta|Ap|St|Lb|In|Cd|Vt|Xo|Xc|Pf|Ek|Bk|Sm|Dq|Do|"
                         r"Dc|Qo|Qc|Po|Pc|Bo|Bc|Eo|Ec|Ms|Ot|Rs|Re|%[A-Z])\b\s?")


def _escape(m: re.Match) -> str:
  named = m.group(1) or m.group(2)
  if named is not None:
    return _NAMED.get(named, "")
  one = m.group(3)
  if one is not None:
    return _ESCAPES.get(one, one)
  return ""


def _macro_args(rest: str) -> list[str]:
  """A request line's arguments (double quotes group words)."""
  return [a or b for a, b in re.findall(r'"([^"]*)"|(\S+)', rest)]


def roff_to_text(lines: list[str]) -> str:
  """roff source lines -> paragraphs of plain text (blank line between paragraphs)."""
  paras: list[list[str]] = [[]]
  for line in lines:
    if line.startswith((".", "'")):
      body = line[1:].lstrip()
      if not body or body.startswith('\\"'):
        continue
      name, _, rest = body.partition(" ")
      if name in ("B", "I", "SM", "SB", "BI", "IB", "BR", "RB", "IR", "RI", "CW", "UR", "MT", "Lk") or (
          name[:1].isupper() and _MDOC_WORDS.match(name)):
        args = _macro_args(rest)
        joiner = "" if len(name) == 2 and name in ("BI", "IB", "BR", "RB", "IR", "RI") else " "
        text = joiner.join(args)
        if name not in ("B", "I", "SM", "SB", "BI", "IB", "BR", "RB", "IR", "RI", "CW"):
          text = _MDOC_WORDS.sub("", text)
        if text:
          paras[-1].append(text)
      elif name in _BREAKS or name.startswith(("\\", "T")):
        if paras[-1] and name not in ("br", "ft", "in", "ti", "ne", "ta"):
          paras.append([])
      # any other request (a page's own macros): dropped
      continue
    if line.strip():
      paras[-1].append(line)
    elif paras[-1]:
      paras.append([])
  out = []
  for p in paras:
    text = _ESCAPE_RE.sub(_escape, " ".join(p))
    text = " ".join(text.split())
    if text:
      out.append(text)
  return "\n\n".join(out)


def _sections(lines: list[str]) -> dict[str, list[str]]:
  """Section name (upper case, quotes removed) -> its source lines, for ``.SH`` and ``.Sh`` headings."""
  out: dict[str, list[str]] = {}
  current: list[str] | None = None
  for line in lines:
    if line.startswith((".SH", ".Sh")) and (len(line) == 3 or line[3] in " \t"):
      title = " ".join(_macro_args(line[3:])).upper().strip()
      current = out.setdefault(title, [])
      continue
    if current is not None:
      current.append(line)
  return out


def parse_page(text: str) -> tuple[str, str, str] | str:
  """A page's source -> (names, NAME description, DESCRIPTION text), or the skip reason."""
  lines = text.splitlines()
  if lines and len([ln for ln in lines if ln.strip()]) <= 2 and any(ln.startswith(".so ") for ln in lines):
    return "redirect"
  sections = _sections(lines)
  name_lines = sections.get("NAME")
  if not name_lines:
    return "no_name"
  nd = [ln for ln in name_lines if ln.startswith(".Nd")]
  if nd:  # mdoc
    names = " ".join(_macro_args(" ".join(ln[3:] for ln in name_lines if ln.startswith(".Nm"))))
    whatis = roff_to_text([ln[4:] for ln in nd])
  else:
    flat = roff_to_text(name_lines).replace("\n\n", " ")
    m = re.search(r"\s[-\u2010-\u2015]\s|\s-{1,2}\s|\\-", flat)
    parts = re.split(r"\s+(?:-|\u2010|\u2011|\u2012|\u2013|\u2014|\u2015)+\s+", flat, maxsplit=1)
    if m is None or len(parts) != 2:
      return "no_name"
    names, whatis = parts
  whatis = whatis.strip().strip('"').strip()
  desc_lines = sections.get("DESCRIPTION")
  description = roff_to_text(desc_lines) if desc_lines else ""
  if not whatis:
    return "no_name"
  if len(description.split()) < 5:
    return "no_description"
  return names.strip(), whatis, description


def page_files(root: str | Path = DEFAULT_DIR) -> list[Path]:
  """The English pages under `root` (``man1``..``man9``), sorted."""
  d = Path(root)
  if not d.is_dir():
    raise FileNotFoundError(f"man page directory {str(d)!r} not found (Debian: apt-get install -y man-db, and "
                            "unminimize in a Docker image)")
  files = sorted(p for sub in sorted(d.iterdir()) if sub.is_dir() and _SECTION_DIR.match(sub.name)
                 for p in sub.iterdir() if p.is_file())
  if not files:
    raise FileNotFoundError(f"no man pages under {str(d)!r}/man[1-9]")
  return files


# The Google Cloud SDK installs ~15k generated pages ("gcloud_alpha_compute_..."), one templated tool that would
# outnumber every other page five to one.
EXCLUDE_PREFIXES = ("gcloud",)


def read_pairs(root: str | Path = DEFAULT_DIR, max_words: int = 200, stats: dict | None = None,
               exclude_prefixes: tuple[str, ...] = EXCLUDE_PREFIXES) -> Iterator[dict]:
  """``{"query", "positive", "key", "path"}`` per usable page, in path order; skipped pages are counted by reason
  in `stats` (man pages are best-effort text: a bad page never stops the evaluation). Pages whose file name starts
  with one of `exclude_prefixes` are left out (``stats["excluded"]``)."""
  stats = {} if stats is None else stats
  seen: set[str] = set()
  for path in page_files(root):
    if exclude_prefixes and path.name.startswith(exclude_prefixes):
      stats["excluded"] = stats.get("excluded", 0) + 1
      continue
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      stats["invalid_utf8"] = stats.get("invalid_utf8", 0) + 1
      continue
    parsed = parse_page(text)
    if isinstance(parsed, str):
      stats[parsed] = stats.get(parsed, 0) + 1
      continue
    names, whatis, description = parsed
    positive = " ".join(description.split()[:max_words])
    if positive in seen:
      stats["duplicate"] = stats.get("duplicate", 0) + 1
      continue
    seen.add(positive)
    stats["pages"] = stats.get("pages", 0) + 1
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    yield {"query": whatis, "positive": positive, "key": f"{path.parent.name}/{name}", "names": names,
           "path": str(path)}
