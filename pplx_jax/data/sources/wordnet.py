"""Pure-Python reader for the Princeton WordNet 3.0 database files (no nltk).

WordNet is the small, real, locally installable text corpus used by the
quickstarts and tests (Debian/Ubuntu: ``apt-get install -y wordnet-base``, which
puts the database under ``/usr/share/wordnet``).  From it we build

* pretraining text: one short document per synset (lemmas, gloss, examples),
* retrieval pairs: lemma -> definition and example sentence -> definition,
* (later) contextual documents: synsets grouped by lexicographer file or
  hypernym, so that one chunk on its own is ambiguous.

File format (wndb(5WN)), one synset per line of ``data.{noun,verb,adj,adv}``::

    synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id...]
        p_cnt [ptr...] [frames...] | gloss

* ``synset_offset``: 8-digit decimal byte offset of the line in its file;
* ``lex_filenum``: 2-digit decimal lexicographer file number (see
  :data:`LEXNAMES`, from lexnames(5WN));
* ``ss_type``: ``n`` ``v`` ``a`` ``s`` (adjective satellite, stored in
  ``data.adj``) ``r``;
* ``w_cnt``: 2-digit **hexadecimal** word count; ``word`` uses ``_`` for
  spaces and, for adjectives, may end in a syntactic marker ``(a)``, ``(p)``
  or ``(ip)``; ``lex_id``: 1 hex digit;
* ``p_cnt``: 3-digit decimal pointer count; each pointer is
  ``pointer_symbol synset_offset pos source/target``;
* ``frames`` (``data.verb`` only): ``f_cnt + f_num w_num [+ f_num w_num...]``;
* ``gloss`` after ``|``: a definition followed by ``; "example"`` sentences.

Header (licence) lines start with two spaces and are skipped.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

__all__ = [
    "DEFAULT_DIR",
    "DATA_FILES",
    "LEXNAMES",
    "INSTALL_HINT",
    "Synset",
    "find_wordnet_dir",
    "read_synsets",
    "split_gloss",
    "pretraining_text",
    "pretraining_texts",
    "retrieval_pairs",
    "split_of",
]

DEFAULT_DIR = "/usr/share/wordnet"

INSTALL_HINT = (
    "install the WordNet 3.0 database with `apt-get install -y wordnet-base` "
    f"(Debian/Ubuntu, installs into {DEFAULT_DIR}) or pass path= pointing to a "
    "directory holding data.noun, data.verb, data.adj and data.adv"
)

# Requested part of speech -> database file.  Adjective satellites ("s") live
# in data.adj together with head adjectives ("a").
DATA_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "s": "data.adj", "r": "data.adv"}

# Which ss_type values may appear in each data file.
_FILE_SS_TYPES = {"data.noun": "n", "data.verb": "v", "data.adj": "as", "data.adv": "r"}

# lexnames(5WN): the 45 lexicographer files, indexed by lex_filenum (00-44).
LEXNAMES: tuple[str, ...] = (
    "adj.all",  # 00 all adjective clusters
    "adj.pert",  # 01 relational adjectives (pertainyms)
    "adv.all",  # 02 all adverbs
    "noun.Tops",  # 03 unique beginner for nouns
    "noun.act",  # 04 nouns denoting acts or actions
    "noun.animal",  # 05 nouns denoting animals
    "noun.artifact",  # 06 nouns denoting man-made objects
    "noun.attribute",  # 07 nouns denoting attributes of people and objects
    "noun.body",  # 08 nouns denoting body parts
    "noun.cognition",  # 09 nouns denoting cognitive processes and contents
    "noun.communication",  # 10 nouns denoting communicative processes and contents
    "noun.event",  # 11 nouns denoting natural events
    "noun.feeling",  # 12 nouns denoting feelings and emotions
    "noun.food",  # 13 nouns denoting foods and drinks
    "noun.group",  # 14 nouns denoting groupings of people or objects
    "noun.location",  # 15 nouns denoting spatial position
    "noun.motive",  # 16 nouns denoting goals
    "noun.object",  # 17 nouns denoting natural objects (not man-made)
    "noun.person",  # 18 nouns denoting people
    "noun.phenomenon",  # 19 nouns denoting natural phenomena
    "noun.plant",  # 20 nouns denoting plants
    "noun.possession",  # 21 nouns denoting possession and transfer of possession
    "noun.process",  # 22 nouns denoting natural processes
    "noun.quantity",  # 23 nouns denoting quantities and units of measure
    "noun.relation",  # 24 nouns denoting relations between people or things or ideas
    "noun.shape",  # 25 nouns denoting two and three dimensional shapes
    "noun.state",  # 26 nouns denoting stable states of affairs
    "noun.substance",  # 27 nouns denoting substances
    "noun.time",  # 28 nouns denoting time and temporal relations
    "verb.body",  # 29 verbs of grooming, dressing and bodily care
    "verb.change",  # 30 verbs of size, temperature change, intensifying, etc.
    "verb.cognition",  # 31 verbs of thinking, judging, analyzing, doubting
    "verb.communication",  # 32 verbs of telling, asking, ordering, singing
    "verb.competition",  # 33 verbs of fighting, athletic activities
    "verb.consumption",  # 34 verbs of eating and drinking
    "verb.contact",  # 35 verbs of touching, hitting, tying, digging
    "verb.creation",  # 36 verbs of sewing, baking, painting, performing
    "verb.emotion",  # 37 verbs of feeling
    "verb.motion",  # 38 verbs of walking, flying, swimming
    "verb.perception",  # 39 verbs of seeing, hearing, feeling
    "verb.possession",  # 40 verbs of buying, selling, owning
    "verb.social",  # 41 verbs of political and social activities and events
    "verb.stative",  # 42 verbs of being, having, spatial relations
    "verb.weather",  # 43 verbs of raining, snowing, thawing, thundering
    "adj.ppl",  # 44 participial adjectives
)
assert len(LEXNAMES) == 45

_HYPERNYM_SYMBOLS = ("@", "@i")
# p_cnt pointers: `pointer_symbol synset_offset pos source/target`, space separated.
_POINTER_LIST = re.compile(r"\S{1,2} [0-9]{8} [nvasr] [0-9a-fA-F]{4}(?: \S{1,2} [0-9]{8} [nvasr] [0-9a-fA-F]{4})*")
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Synset:
  """One line of a WordNet ``data.*`` file."""

  offset: int
  pos: str  # ss_type: n, v, a, s (adjective satellite), r
  lex_filenum: int
  lexname: str  # e.g. "noun.animal"
  lemmas: tuple[str, ...]  # underscores replaced by spaces, adjective markers removed
  definition: str  # gloss text before the first example
  examples: tuple[str, ...]  # quoted example sentences, quotes stripped
  hypernyms: tuple[tuple[str, int], ...]  # (pos, offset) of "@" and "@i" pointers

  @property
  def key(self) -> str:
    """Stable identifier, e.g. ``"n:02084071"`` (``pos:offset``)."""
    return f"{self.pos}:{self.offset:08d}"

  @property
  def hypernym_keys(self) -> tuple[str, ...]:
    """``key``-style identifiers of the hypernyms, e.g. ``("n:02083346",)``."""
    return tuple(f"{p}:{o:08d}" for p, o in self.hypernyms)


# --------------------------------------------------------------------------- #
# locating the database
# --------------------------------------------------------------------------- #


def find_wordnet_dir(path: str | Path | None = None) -> Path:
  """Return the WordNet database directory (default :data:`DEFAULT_DIR`).

  Raises ``FileNotFoundError`` (with an ``apt-get install -y wordnet-base``
  hint) when the directory is missing or holds none of the ``data.*`` files.
  """
  d = Path(DEFAULT_DIR if path is None else path).expanduser()
  if not d.is_dir():
    raise FileNotFoundError(f"WordNet database directory {str(d)!r} not found; {INSTALL_HINT}")
  if not any((d / name).is_file() for name in set(DATA_FILES.values())):
    raise FileNotFoundError(
        f"WordNet directory {str(d)!r} holds none of data.noun/data.verb/data.adj/data.adv; {INSTALL_HINT}"
    )
  return d


# --------------------------------------------------------------------------- #
# gloss splitting
# --------------------------------------------------------------------------- #

# Boundary between two examples: a closing quote and an opening quote with at
# most one punctuation mark (and an optional "or") between them; or a
# semicolon next to a quote on one side only (data typos such as
# `"drop a hint"; drop names"` or `"...fear:; "he sought..."`).
_EXAMPLE_SEP = re.compile(r'"\s*[;:,.]?\s*(?:or\s+)?"|"\s*;\s*|;\s*"')
_DEF_TRAIL = " \t;:,"
# A double quote typed for an apostrophe: `"I"m siding against ..."`.
_QUOTE_APOSTROPHE = re.compile(r'(?<=[A-Za-z])"(?=(?:m|s|t|d|re|ll|ve)\b)')
_EX_TRAIL = " \t;:,"


def _clean_example(segment: str) -> str:
  """One example segment -> the sentence, outer quotes removed."""
  s = segment.strip().strip(";").strip()
  if not s:
    return ""
  if not s.startswith('"') and '"' in s:
    # leading usage note before the quote: `(`plenty' is nonstandard) "I've had plenty"`
    pre, _, post = s.partition('"')
    pre = pre.strip()
    if pre.startswith("(") and pre.endswith(")"):
      s = '"' + post
  quoted = s.startswith('"')
  body = s[1:] if quoted else s
  if body.endswith('"') and '"' not in body[:-1]:
    body = body[:-1]  # the common case: "sentence"
  elif body.count('"') == 1:
    inner, _, tail = body.partition('"')
    tail = tail.strip()
    if not tail.strip(").;,:!?"):
      body = inner + tail  # `"at the time appointed (or the appointed time")`
    elif tail[0] in "(-" or tail[0].isupper():
      body = inner  # attribution: `"..."- Henry Miller`, `"..." (Matthew 7:12)`, `"..." H.L.Mencken`
    else:
      body = '"' + body  # quoted phrase inside a sentence: `"lang syne" is Scottish`
  elif '"' in body:
    # dialogue: `"I know it's hard," he continued, "but there is no choice"`
    body = '"' + body
    if body.count('"') % 2 and not body.endswith('"'):
      body += '"'  # its closing quote was consumed as a separator
  return body.strip().rstrip(_EX_TRAIL).strip()


def _split_examples(rest: str) -> tuple[str, ...]:
  out = []
  if '"' in rest[1:]:
    rest = rest[:1] + _QUOTE_APOSTROPHE.sub("'", rest[1:])
  for part in _EXAMPLE_SEP.split(rest):
    ex = _clean_example(part)
    if ex:
      out.append(ex)
  return tuple(out)


def _example_start(g: str) -> int:
  """Index of the quote opening the first example, or -1.

  An example starts at a double quote that is outside parentheses and comes
  right after ``;`` ``:`` ``,`` or ``)`` (``; "`` in almost all glosses).
  Quoted words inside the definition (`as in "carrot and stick"`,
  `(e.g., "he said ...")`) do not qualify.
  """
  i = g.find('"')
  while i >= 0:
    before = g[:i].rstrip()
    if not before:
      return i
    if (
        before[-1] in ";:,)"
        and g.count("(", 0, i) <= g.count(")", 0, i)
        and not before.endswith("e.g.,")
    ):
      return i
    i = g.find('"', i + 1)
  return -1


def split_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
  """Split a WordNet gloss into ``(definition, examples)``.

  The definition is the text before the first example (semicolons inside
  the definition are kept); examples are the double-quoted sentences after
  it, quotes stripped.  Almost all glosses follow ``definition; "ex1";
  "ex2"``; the few hundred that deviate (``: "example"``, ``, "example"``,
  missing or unbalanced quotes, attributions such as ``"..."- Henry
  Miller``) are handled on a best-effort basis so that every gloss of
  WordNet 3.0 yields a non-empty definition.
  """
  g = gloss.strip()
  i = _example_start(g)
  if i < 0:
    i = g.find('; "')  # unbalanced parentheses in the definition
    if i >= 0:
      i += 2
  if i >= 0:
    return g[:i].rstrip(_DEF_TRAIL), _split_examples(g[i:])
  body = g.rstrip(" ;")
  if body.endswith('"') and body.count('"') == 1:
    # a lone closing quote: `focus once again; The physicist refocused the light beam"`
    inner = body[:-1]
    k = inner.rfind("; ")
    if k >= 0:
      ex = inner[k + 2 :].strip()
      return inner[:k].rstrip(_DEF_TRAIL), (ex,) if ex else ()
    return inner.rstrip(_DEF_TRAIL), ()
  return g.rstrip(_DEF_TRAIL), ()


# --------------------------------------------------------------------------- #
# data file parsing
# --------------------------------------------------------------------------- #


class _LineError(ValueError):
  pass


_HEX_CHARS = frozenset("0123456789abcdefABCDEF")


def _dec(tok: str, what: str) -> int:
  if not tok.isascii() or not tok.isdigit():
    raise _LineError(f"{what} {tok!r} is not a decimal integer")
  return int(tok)


def _hex(tok: str, what: str) -> int:
  if not tok or not _HEX_CHARS.issuperset(tok):
    raise _LineError(f"{what} {tok!r} is not a hexadecimal integer")
  return int(tok, 16)


def _parse_line(line: str, allowed_ss_types: str) -> Synset:
  bar = line.find("|")
  if bar < 0:
    raise _LineError("missing '|' gloss separator")
  fields = line[:bar].split()
  n = len(fields)
  if n < 7:
    raise _LineError(f"too few fields ({n}) before the gloss")

  offset = _dec(fields[0], "synset_offset")
  lex_filenum = _dec(fields[1], "lex_filenum")
  if lex_filenum >= len(LEXNAMES):
    raise _LineError(f"lex_filenum {lex_filenum} outside 0..{len(LEXNAMES) - 1}")
  ss_type = fields[2]
  if len(ss_type) != 1 or ss_type not in allowed_ss_types:
    raise _LineError(f"ss_type {ss_type!r} not allowed in this file (expected one of {', '.join(allowed_ss_types)})")
  w_cnt = _hex(fields[3], "w_cnt")
  if w_cnt == 0:
    raise _LineError("w_cnt is 0")
  end_words = 4 + 2 * w_cnt
  if end_words >= n:
    raise _LineError(f"w_cnt={w_cnt} words (+ p_cnt) do not fit in the line")
  words = fields[4:end_words:2]
  lex_ids = "".join(fields[5:end_words:2])
  if len(lex_ids) != w_cnt or not _HEX_CHARS.issuperset(lex_ids):
    raise _LineError(f"lex_ids {fields[5:end_words:2]!r} are not single hexadecimal digits")
  if ss_type == "a" or ss_type == "s":
    words = [_ADJ_MARKER.sub("", w) if w[-1] == ")" else w for w in words]
  lemmas = tuple([w.replace("_", " ") for w in words])

  p_cnt = _dec(fields[end_words], "p_cnt")
  i = end_words + 1
  end_ptrs = i + 4 * p_cnt
  if end_ptrs > n:
    raise _LineError(f"p_cnt={p_cnt} pointers do not fit in the line")
  if p_cnt:
    if not _POINTER_LIST.fullmatch(" ".join(fields[i:end_ptrs])):
      raise _LineError(f"malformed pointer list ({p_cnt} pointers): {' '.join(fields[i:end_ptrs])!r}")
    syms = fields[i:end_ptrs:4]
    hyp_idx = []
    for sym in _HYPERNYM_SYMBOLS:  # list.count/index run in C; most synsets have 0-1 hypernyms
      k = -1
      for _ in range(syms.count(sym)):
        k = syms.index(sym, k + 1)
        hyp_idx.append(k)
    if len(hyp_idx) > 1:
      hyp_idx.sort()
    hypernyms = tuple([(fields[i + 4 * k + 2], int(fields[i + 4 * k + 1])) for k in hyp_idx])
  else:
    hypernyms = ()
  i = end_ptrs

  if i < n:  # verb sentence frames: f_cnt + f_num w_num [+ f_num w_num ...]
    if ss_type != "v":
      raise _LineError(f"{n - i} unexpected field(s) after the pointers: {' '.join(fields[i:])!r}")
    f_cnt = _dec(fields[i], "f_cnt")
    i += 1
    if i + 3 * f_cnt != n:
      raise _LineError(f"f_cnt={f_cnt} verb frames do not match the {n - i} remaining field(s)")
    for j in range(i, n, 3):
      if fields[j] != "+":
        raise _LineError(f"verb frame starts with {fields[j]!r} instead of '+'")
      _dec(fields[j + 1], "f_num")
      _hex(fields[j + 2], "w_num")

  definition, examples = split_gloss(line[bar + 1 :])
  return Synset(
      offset=offset,
      pos=ss_type,
      lex_filenum=lex_filenum,
      lexname=LEXNAMES[lex_filenum],
      lemmas=lemmas,
      definition=definition,
      examples=examples,
      hypernyms=hypernyms,
  )


def _normalize_pos(pos: str | Iterable[str]) -> tuple[list[str], set[str]]:
  """Requested parts of speech -> (files in order, ss_types to keep)."""
  wanted = [pos] if isinstance(pos, str) and len(pos) == 1 else list(pos)
  files: list[str] = []
  keep: set[str] = set()
  for p in wanted:
    if p not in DATA_FILES:
      raise ValueError(f"unknown WordNet pos {p!r}; expected some of n, v, a, s, r")
    keep.update("as" if p == "a" else p)  # "a" includes satellites
    if DATA_FILES[p] not in files:
      files.append(DATA_FILES[p])
  return files, keep


def read_synsets(path: str | Path | None = None, pos: str | Iterable[str] = ("n", "v", "a", "r")) -> Iterator[Synset]:
  """Yield every synset of the requested parts of speech, in file order.

  ``pos`` entries: ``n`` (data.noun), ``v`` (data.verb), ``a`` (data.adj,
  head adjectives *and* satellites), ``s`` (satellites only), ``r``
  (data.adv).  Files are read in the order given.  A malformed line raises
  ``ValueError`` naming the file and 1-based line number.
  """
  files, keep = _normalize_pos(pos)
  d = find_wordnet_dir(path)
  for name in files:
    fp = d / name
    if not fp.is_file():
      raise FileNotFoundError(f"WordNet data file {str(fp)!r} not found; {INSTALL_HINT}")
    allowed = _FILE_SS_TYPES[name]
    with open(fp, encoding="utf-8", errors="strict", newline="\n") as f:
      try:
        for lineno, line in enumerate(f, 1):
          if line.startswith("  ") or not line.strip():
            continue  # licence header / blank line
          try:
            syn = _parse_line(line, allowed)
          except _LineError as e:
            raise ValueError(f"{fp}:{lineno}: malformed WordNet data line: {e}: {line.strip()[:120]!r}") from None
          if syn.pos in keep:
            yield syn
      except UnicodeDecodeError as e:
        raise ValueError(f"{fp}: not valid UTF-8 text ({e})") from None


# --------------------------------------------------------------------------- #
# derived text
# --------------------------------------------------------------------------- #


def _sentence(text: str) -> str:
  text = text.strip()
  return text if not text or text[-1] in ".!?" else text + "."


def pretraining_text(syn: Synset) -> str:
  """``"lemma1, lemma2: definition. example1. example2."`` for one synset."""
  parts = [", ".join(syn.lemmas) + ":"]
  if syn.definition:
    parts.append(_sentence(syn.definition))
  parts.extend(_sentence(e) for e in syn.examples)
  return " ".join(parts)


def pretraining_texts(path: str | Path | None = None) -> Iterator[str]:
  """One deterministic document per synset (all parts of speech, file order)."""
  for syn in read_synsets(path):
    yield pretraining_text(syn)


def retrieval_pairs(path: str | Path | None = None) -> Iterator[dict]:
  """Query/positive pairs: every lemma and every example sentence -> definition.

  Yields ``{"query", "positive", "synset", "kind"}`` with ``kind`` in
  ``{"lemma", "example"}``; for each synset the lemma pairs come first, then
  the example pairs.  Synsets without a definition are skipped.
  """
  for syn in read_synsets(path):
    if not syn.definition:
      continue
    key = syn.key
    for lemma in syn.lemmas:
      yield {"query": lemma, "positive": syn.definition, "synset": key, "kind": "lemma"}
    for ex in syn.examples:
      yield {"query": ex, "positive": syn.definition, "synset": key, "kind": "example"}


def split_of(key: str, validation_fraction: float, seed: int = 0) -> str:
  """``"train"`` or ``"validation"`` for a synset key, by a stable hash.

  Uses blake2b of ``"{seed}:{key}"`` (independent of ``PYTHONHASHSEED``), so
  a synset always lands in the same split and all pairs/texts of one synset
  share it.  About ``validation_fraction`` of the keys go to validation.
  """
  if not 0.0 <= validation_fraction <= 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1], got {validation_fraction}")
  h = hashlib.blake2b(f"{seed}:{key}".encode("utf-8"), digest_size=8).digest()
  u = int.from_bytes(h, "big") / 2.0**64  # uniform in [0, 1)
  return "validation" if u < validation_fraction else "train"
