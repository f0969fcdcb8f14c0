"""Tests for pplx_jax.data.sources.wordnet on the real WordNet 3.0 files (Debian `wordnet-base`).

The real-data tests deliberately do not skip: without /usr/share/wordnet they fail
with the FileNotFoundError that tells how to install the database.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pplx_jax.data.sources import wordnet as wn
from pplx_jax.data.sources.wordnet import (
    DEFAULT_DIR,
    LEXNAMES,
    Synset,
    find_wordnet_dir,
    pretraining_text,
    pretraining_texts,
    read_synsets,
    retrieval_pairs,
    split_gloss,
    split_of,
)

# Measured on WordNet 3.0 as shipped by Debian wordnet-base 1:3.0-37.
COUNTS = {"n": 82115, "v": 13767, "a": 7463, "s": 10693, "r": 3621}
TOTAL = 117659
ADJ_TOTAL = 18156  # head adjectives + satellites, all in data.adj
WITH_EXAMPLES = 32921  # synsets whose gloss has at least one example sentence
N_EXAMPLES = 48346  # example sentences in all
WITH_EXAMPLES_BY_POS = {"n": 8736, "v": 9694, "a": 4354, "s": 6945, "r": 3192}
WITH_HYPERNYMS = 95322  # synsets with at least one @ / @i pointer
N_HYPERNYMS = 97666
N_LEMMA_PAIRS = 206978


@functools.lru_cache(maxsize=1)
def _all() -> tuple[Synset, ...]:
  # Raises FileNotFoundError ("apt-get install -y wordnet-base") when missing,
  # which makes every real-data test fail rather than skip.
  return tuple(read_synsets())


@functools.lru_cache(maxsize=1)
def _by_key() -> dict[str, Synset]:
  return {s.key: s for s in _all()}


def _get(key: str) -> Synset:
  return _by_key()[key]


# --------------------------------------------------------------------------- #
# locating the database
# --------------------------------------------------------------------------- #


def test_default_dir_is_installed():
  assert DEFAULT_DIR == "/usr/share/wordnet"
  d = find_wordnet_dir()
  assert d == Path(DEFAULT_DIR)
  for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
    assert (d / name).is_file()


def test_missing_directory_error_mentions_wordnet_base(tmp_path):
  missing = tmp_path / "no-wordnet-here"
  with pytest.raises(FileNotFoundError, match=r"apt-get install -y wordnet-base"):
    find_wordnet_dir(missing)
  with pytest.raises(FileNotFoundError, match=r"wordnet-base"):
    next(read_synsets(missing))
  with pytest.raises(FileNotFoundError, match=r"wordnet-base"):
    next(pretraining_texts(missing))
  # a directory without any data.* file is rejected with the same hint
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"apt-get install -y wordnet-base"):
    find_wordnet_dir(tmp_path / "empty")


def test_missing_data_file_for_requested_pos(tmp_path):
  (tmp_path / "data.noun").write_text(
      "  1 header\n00000028 03 n 01 thing 0 000 | a thing\n", encoding="utf-8"
  )
  assert [s.lemmas for s in read_synsets(tmp_path, pos="n")] == [("thing",)]
  with pytest.raises(FileNotFoundError, match=r"data\.verb.*wordnet-base"):
    list(read_synsets(tmp_path, pos=("n", "v")))


def test_lexnames_table():
  assert len(LEXNAMES) == 45
  assert LEXNAMES[0] == "adj.all"
  assert LEXNAMES[2] == "adv.all"
  assert LEXNAMES[3] == "noun.Tops"
  assert LEXNAMES[5] == "noun.animal"
  assert LEXNAMES[18] == "noun.person"
  assert LEXNAMES[28] == "noun.time"
  assert LEXNAMES[29] == "verb.body"
  assert LEXNAMES[43] == "verb.weather"
  assert LEXNAMES[44] == "adj.ppl"
  assert len(set(LEXNAMES)) == 45
  assert all(n.split(".")[0] in {"adj", "adv", "noun", "verb"} and n == n.strip() for n in LEXNAMES)


# --------------------------------------------------------------------------- #
# counts and integrity on the real files
# --------------------------------------------------------------------------- #


def test_counts_per_pos():
  syns = _all()
  assert len(syns) == TOTAL
  assert dict(collections.Counter(s.pos for s in syns)) == COUNTS
  assert len({s.key for s in syns}) == TOTAL
  assert sum(1 for s in syns if s.examples) == WITH_EXAMPLES
  assert sum(len(s.examples) for s in syns) == N_EXAMPLES
  assert dict(collections.Counter(s.pos for s in syns if s.examples)) == WITH_EXAMPLES_BY_POS
  assert sum(1 for s in syns if s.hypernyms) == WITH_HYPERNYMS
  assert sum(len(s.hypernyms) for s in syns) == N_HYPERNYMS
  # every lexicographer file is used, and it matches the part of speech
  assert {s.lexname for s in syns} == set(LEXNAMES)
  prefix = {"n": "noun.", "v": "verb.", "a": "adj.", "s": "adj.", "r": "adv."}
  assert all(s.lexname.startswith(prefix[s.pos]) for s in syns)


def test_pos_filter():
  assert sum(1 for _ in read_synsets(pos=("a",))) == ADJ_TOTAL  # "a" includes satellites
  sats = list(read_synsets(pos="s"))
  assert len(sats) == COUNTS["s"] and {s.pos for s in sats} == {"s"}
  advs = list(read_synsets(pos="r"))
  assert len(advs) == COUNTS["r"] and {s.pos for s in advs} == {"r"}
  with pytest.raises(ValueError, match="unknown WordNet pos"):
    list(read_synsets(pos=("x",)))


def test_every_line_parses_cleanly():
  syns = _all()
  keys = set(_by_key())
  for s in syns:
    assert s.lemmas and all(lem and "_" not in lem for lem in s.lemmas), s
    assert s.definition and s.definition == s.definition.strip(), s
    assert not s.definition.endswith((";", ":", ",")), s
    assert all(e and e == e.strip() for e in s.examples), s
    assert s.lexname == LEXNAMES[s.lex_filenum]
    for h in s.hypernym_keys:
      assert h in keys, (s.key, h)  # hypernym pointers resolve
  # adjective markers like "(p)" are stripped everywhere
  assert not any(lem.endswith(("(a)", "(p)", "(ip)")) for s in syns for lem in s.lemmas)
  # hypernyms only exist for nouns and verbs, and point to the same pos
  assert all(h[0] == s.pos for s in syns for h in s.hypernyms)
  assert not any(s.hypernyms for s in syns if s.pos in "asr")


def test_offsets_are_byte_offsets():
  d = find_wordnet_dir()
  raw = {pos: (d / name).read_bytes() for pos, name in (("n", "data.noun"), ("v", "data.verb"), ("a", "data.adj"), ("r", "data.adv"))}
  raw["s"] = raw["a"]
  for s in _all():
    data = raw[s.pos]
    assert data[s.offset : s.offset + 9] == f"{s.offset:08d} ".encode(), s.key
    assert data[s.offset - 1] == 0x0A, s.key  # starts a line (the licence header comes first)


def test_index_noun_dog_sense_1():
  # index.noun: lemma pos synset_cnt p_cnt [ptr...] sense_cnt tagsense_cnt offsets...
  line = next(
      ln for ln in (find_wordnet_dir() / "index.noun").read_text().splitlines() if ln.startswith("dog n ")
  )
  f = line.split()
  synset_cnt = int(f[2])
  offsets = [int(o) for o in f[-synset_cnt:]]
  assert offsets[0] == 2084071
  dog = _get(f"n:{offsets[0]:08d}")
  assert "dog" in dog.lemmas
  assert all("dog" in _get(f"n:{o:08d}").lemmas for o in offsets)


# --------------------------------------------------------------------------- #
# known synsets, field by field
# --------------------------------------------------------------------------- #


def test_known_noun_dog():
  s = _get("n:02084071")
  assert s == Synset(
      offset=2084071,
      pos="n",
      lex_filenum=5,
      lexname="noun.animal",
      lemmas=("dog", "domestic dog", "Canis familiaris"),
      definition=(
          "a member of the genus Canis (probably descended from the common wolf) that has been "
          "domesticated by man since prehistoric times; occurs in many breeds"
      ),
      examples=("the dog barked all night",),
      hypernyms=(("n", 2083346), ("n", 1317541)),
  )
  assert s.key == "n:02084071"
  assert s.hypernym_keys == ("n:02083346", "n:01317541")
  assert _get("n:02083346").lemmas == ("canine", "canid")
  assert _get("n:01317541").lemmas == ("domestic animal", "domesticated animal")


def test_known_noun_root_and_instance_hypernym():
  entity = _get("n:00001740")
  assert entity.lemmas == ("entity",)
  assert entity.lexname == "noun.Tops" and entity.lex_filenum == 3
  assert entity.hypernyms == () and entity.examples == ()
  einstein = _get("n:10954498")
  assert einstein.lemmas == ("Einstein", "Albert Einstein")
  assert einstein.lexname == "noun.person"
  assert einstein.hypernyms == (("n", 10428004),)  # an "@i" instance hypernym
  assert _get("n:10428004").lemmas[0] == "physicist"


def test_known_verb_with_examples():
  s = _get("v:00004032")
  assert s.offset == 4032 and s.pos == "v"
  assert s.lex_filenum == 29 and s.lexname == "verb.body"
  assert s.lemmas == ("sigh", "suspire")
  # the definition keeps its own semicolon; only `; "` starts the examples
  assert s.definition == "heave or utter a sigh; breathe deeply and heavily"
  assert s.examples == ("She sighed sadly",)
  assert s.hypernyms == (("v", 1740),)
  # verb sentence frames are parsed and do not leak anywhere
  force_out = _get("v:00003662")
  assert force_out.lemmas == ("force out",)
  assert force_out.examples == ("force out the air", "force out the splinter")


def test_known_adjective_satellite():
  s = _get("s:00003553")
  assert s.pos == "s" and s.offset == 3553
  assert s.lexname == "adj.all" and s.lex_filenum == 0
  assert s.lemmas == ("emergent", "emerging")
  assert s.definition == "coming into existence"
  assert s.examples == ("an emergent republic",)
  assert s.hypernyms == ()
  head = _get("a:00001740")
  assert head.lemmas == ("able",)
  assert head.definition.startswith("(usually followed by `to') having the necessary means")
  assert head.examples[0] == "able to swim" and len(head.examples) == 4


def test_adjective_markers_stripped():
  handy = _get("s:00019731")
  assert handy.lemmas == ("handy", "ready to hand")  # was ready_to_hand(p)
  used_to = _get("s:00024619")
  assert used_to.lemmas == ("used to", "wont to")  # both (p)
  assert used_to.examples[-1] == "...was wont to complain that this is a cold world"  # "- Henry David Thoreau" dropped
  galore = _get("s:00014358")
  assert galore.lemmas == ("abounding", "galore")  # galore(ip)


def test_known_adverb():
  s = _get("r:00002142")
  assert s.lemmas == ("BC", "B.C.", "before Christ")
  assert s.lexname == "adv.all"
  assert s.definition == "before the Christian era; used following dates before the supposed year Christ was born"
  assert s.examples == ("in 200 BC",)


# --------------------------------------------------------------------------- #
# gloss splitting
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "gloss, definition, examples",
    [
        ("a thing", "a thing", ()),
        ('a thing; "ex one"', "a thing", ("ex one",)),
        ('part one; part two; "ex one"; "ex two"  ', "part one; part two", ("ex one", "ex two")),
        ('a thing; "ex one";', "a thing", ("ex one",)),  # trailing semicolon
        ("connect to a vehicle: \"hitch the trailer to the car\"", "connect to a vehicle", ("hitch the trailer to the car",)),
        ('propel, "Carry the ball"; "dribble the ball"', "propel", ("Carry the ball", "dribble the ball")),
        ('strong and sharp;"the pungent taste"', "strong and sharp", ("the pungent taste",)),
        ('(of persons) "a hard-to-please taskmaster"', "(of persons)", ("a hard-to-please taskmaster",)),
        # quoted words inside the definition are not examples
        ('promise of reward as in "carrot and stick"', 'promise of reward as in "carrot and stick"', ()),
        ('spread by scattering ("straw" is archaic)', 'spread by scattering ("straw" is archaic)', ()),
        ('reach a goal, e.g., "make the first team"', 'reach a goal, e.g., "make the first team"', ()),
        (
            'the agent (usually expressed as "on behalf of"); "signed on behalf of the minor"',
            'the agent (usually expressed as "on behalf of")',
            ("signed on behalf of the minor",),
        ),
        # attributions and separators seen in the real data
        ('a change; "taking place in the world"- Henry Miller', "a change", ("taking place in the world",)),
        ('a command; "do unto them" (Matthew 7:12)', "a command", ("do unto them",)),
        ('hard to control; "a difficult child", "an unmanageable situation"', "hard to control", ("a difficult child", "an unmanageable situation")),
        ('a feel; "he has a feel" or "get the feel of it";', "a feel", ("he has a feel", "get the feel of it")),
        ('judge; "How do you?" "We should not"', "judge", ("How do you?", "We should not")),
        ('begin to say; "Now listen, friends," he began', "begin to say", ('"Now listen, friends," he began',)),
        ('take sides; "I"m siding against him"', "take sides", ("I'm siding against him",)),
        ('utter; "drop a hint"; drop names"', "utter", ("drop a hint", "drop names")),
        ('a notice; "a notice of sale', "a notice", ("a notice of sale",)),  # unterminated
        ("focus once again; The physicist refocused the beam\"", "focus once again", ("The physicist refocused the beam",)),
        ('a local branch where postal services are available"', "a local branch where postal services are available", ()),
    ],
)
def test_split_gloss(gloss, definition, examples):
  assert split_gloss(gloss) == (definition, examples)


def test_example_extraction_on_real_glosses():
  by_key = _by_key()
  assert by_key["n:00001930"].examples == ()  # physical entity
  whole = by_key["n:00003553"]
  assert whole.lemmas == ("whole", "unit")
  assert whole.examples == ("how big is that part compared to the whole?", "the team is a unit")
  depth = next(s for s in _all() if s.pos == "n" and s.lemmas[0] == "depth" and "intense" in s.definition)
  assert depth.examples == ("the depth of his breathing", "the depth of his sighs", "the depth of his emotion")
  swim = next(s for s in _all() if s.pos == "n" and s.lemmas == ("swimming", "swim"))
  assert swim.definition == "the act of swimming"
  assert swim.examples == ("it was the swimming they enjoyed most", "they took a short swim in the pool")
  # no example keeps its surrounding quotes, apart from a handful of dialogue /
  # quoted-phrase sentences such as `"Now listen, friends," he began`
  quoted = [e for s in _all() for e in s.examples if '"' in e]
  assert len(quoted) <= 12, quoted
  assert all(e.count('"') >= 2 for e in quoted)
  # definitions contain a double quote only for quoted words / inline uses
  assert sum(1 for s in _all() if '"' in s.definition) <= 20


# --------------------------------------------------------------------------- #
# derived text
# --------------------------------------------------------------------------- #


def test_pretraining_texts():
  first = list(itertools.islice(pretraining_texts(), 3))
  assert first[0] == (
      "entity: that which is perceived or known or inferred to have its own distinct existence (living or nonliving)."
  )
  assert first[2].startswith("abstraction, abstract entity: a general concept formed")
  assert pretraining_text(_get("n:02084071")) == (
      "dog, domestic dog, Canis familiaris: a member of the genus Canis (probably descended from the common wolf) "
      "that has been domesticated by man since prehistoric times; occurs in many breeds. the dog barked all night."
  )
  assert pretraining_text(_get("v:00004032")) == (
      "sigh, suspire: heave or utter a sigh; breathe deeply and heavily. She sighed sadly."
  )
  assert pretraining_text(_get("a:00001740")).endswith("able to get a grant for the project.")
  n = 0
  for text in pretraining_texts():
    assert text and "\n" not in text and "_" not in text.split(":", 1)[0]
    n += 1
  assert n == TOTAL


def test_retrieval_pairs():
  kinds = collections.Counter()
  synsets_seen = set()
  for p in retrieval_pairs():
    assert set(p) == {"query", "positive", "synset", "kind"}
    assert p["query"] and p["positive"]
    kinds[p["kind"]] += 1
    synsets_seen.add(p["synset"])
  assert kinds == {"lemma": N_LEMMA_PAIRS, "example": N_EXAMPLES}
  assert len(synsets_seen) == TOTAL
  head = list(itertools.islice(retrieval_pairs(), 4))
  assert head[0] == {
      "query": "entity",
      "positive": "that which is perceived or known or inferred to have its own distinct existence (living or nonliving)",
      "synset": "n:00001740",
      "kind": "lemma",
  }
  assert [p["query"] for p in head[2:4]] == ["abstraction", "abstract entity"]


def test_retrieval_pairs_for_dog():
  dog_pairs = []
  for p in retrieval_pairs():
    if p["synset"] == "n:02084071":
      dog_pairs.append((p["kind"], p["query"]))
    elif dog_pairs:
      break
  assert dog_pairs == [
      ("lemma", "dog"),
      ("lemma", "domestic dog"),
      ("lemma", "Canis familiaris"),
      ("example", "the dog barked all night"),
  ]


# --------------------------------------------------------------------------- #
# splits
# --------------------------------------------------------------------------- #


def test_split_of_deterministic_and_disjoint():
  keys = [s.key for s in _all()]
  splits = {k: split_of(k, 0.1) for k in keys}
  assert splits == {k: split_of(k, 0.1) for k in keys}  # stable
  train = {k for k, v in splits.items() if v == "train"}
  val = {k for k, v in splits.items() if v == "validation"}
  assert train.isdisjoint(val) and len(train) + len(val) == TOTAL
  assert 0.09 < len(val) / TOTAL < 0.11
  # a smaller fraction gives a subset of the validation keys (monotone in the fraction)
  assert {k for k in val if split_of(k, 0.05) == "validation"} == {k for k in keys if split_of(k, 0.05) == "validation"}
  # the seed reshuffles
  other = {k for k in keys if split_of(k, 0.1, seed=1) == "validation"}
  assert other != val and 0.09 < len(other) / TOTAL < 0.11
  assert all(split_of(k, 0.0) == "train" for k in keys[:1000])
  assert all(split_of(k, 1.0) == "validation" for k in keys[:1000])
  # pairs of one synset always share its split
  for p in itertools.islice(retrieval_pairs(), 5000):
    assert split_of(p["synset"], 0.1) == splits[p["synset"]]


def test_split_of_pinned_values_and_hash_seed_independence():
  pinned = {
      "n:00001740": ("validation", "train"),
      "n:02084071": ("train", "train"),
      "v:00004032": ("validation", "train"),
      "s:00003553": ("train", "validation"),
      "r:00002142": ("validation", "validation"),
  }
  for key, (seed0, seed1) in pinned.items():
    assert split_of(key, 0.5) == seed0
    assert split_of(key, 0.5, seed=1) == seed1
  code = (
      "from pplx_jax.data.sources.wordnet import split_of;"
      "print(','.join(split_of(k, 0.5) for k in %r))" % list(pinned)
  )
  outs = set()
  for hashseed in ("0", "12345"):
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    outs.add(res.stdout.strip())
  assert outs == {",".join(v[0] for v in pinned.values())}


def test_split_of_rejects_bad_fraction():
  with pytest.raises(ValueError):
    split_of("n:00001740", 1.5)
  with pytest.raises(ValueError):
    split_of("n:00001740", -0.1)


# --------------------------------------------------------------------------- #
# malformed input
# --------------------------------------------------------------------------- #

_GOOD_NOUN = "00000100 03 n 02 thing 0 other_thing 1 001 @ 00000200 n 0000 | a thing; \"a thing here\"  \n"
_HEADER = "  1 This is a licence header line  \n  2 and another one  \n"


@pytest.mark.parametrize(
    "bad_line, reason",
    [
        ("00000300 03 n 01 thing 0 002 @ 00000200 n 0000 | too few pointers\n", "p_cnt=2"),
        ("00000300 03 n zz thing 0 000 | bad w_cnt\n", "w_cnt"),
        ("00000300 03 n 01 thing 0 000 no gloss separator\n", "'|'"),
        ("0000030x 03 n 01 thing 0 000 | bad offset\n", "synset_offset"),
        ("00000300 99 n 01 thing 0 000 | bad lex_filenum\n", "lex_filenum"),
        ("00000300 03 v 01 thing 0 000 | verb in data.noun\n", "ss_type"),
        ("00000300 03 n 01 thing 0 001 @ 00000200 q 0000 | bad pointer pos\n", "pointer"),
        ("00000300 03 n 01 thing 0 000 01 + 02 00 | frames on a noun\n", "unexpected"),
        ("00000300 03 n 03 thing 0 000 | word count too large\n", "w_cnt"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, bad_line, reason):
  data = tmp_path / "data.noun"
  data.write_text(_HEADER + _GOOD_NOUN + bad_line + _GOOD_NOUN, encoding="utf-8")
  it = read_synsets(tmp_path, pos=("n",))
  good = next(it)  # lines before the bad one are yielded
  assert good.lemmas == ("thing", "other thing") and good.examples == ("a thing here",)
  assert good.hypernyms == (("n", 200),)
  with pytest.raises(ValueError) as exc:
    next(it)
  msg = str(exc.value)
  assert f"{data}:4:" in msg, msg  # file and 1-based line number (2 header lines + 1 good line)
  assert reason in msg, msg


def test_fake_verb_file_with_frames(tmp_path):
  (tmp_path / "data.verb").write_text(
      _HEADER
      + "00000500 29 v 02 sigh 0 suspire 4 002 @ 00000600 v 0000 + 07129602 n 0202 01 + 02 00 | heave a sigh; \"She sighed\"\n"
      + "00000600 29 v 01 breathe 0 000 02 + 02 00 + 08 01 | draw air\n",
      encoding="utf-8",
  )
  syns = list(read_synsets(tmp_path, pos="v"))
  assert [s.key for s in syns] == ["v:00000500", "v:00000600"]
  assert syns[0].hypernyms == (("v", 600),) and syns[0].examples == ("She sighed",)
  (tmp_path / "data.verb").write_text(
      "00000600 29 v 01 breathe 0 000 03 + 02 00 | frame count too large\n", encoding="utf-8"
  )
  with pytest.raises(ValueError, match=r"data\.verb:1:.*f_cnt=3"):
    list(read_synsets(tmp_path, pos="v"))


def test_public_api_names():
  for name in ("DEFAULT_DIR", "LEXNAMES", "Synset", "find_wordnet_dir", "read_synsets",
               "pretraining_texts", "retrieval_pairs", "split_of"):
    assert name in wn.__all__
  with pytest.raises(Exception):
    _get("n:02084071").offset = 1  # frozen
