"""A real contextual retrieval set from WordNet in which a chunk alone is ambiguous and its document resolves it.

The construction is ConTEB's (Football, Geography: the entity is named once, at the top of the document, and the
later chunks refer to it as "it"). One document per noun or verb synset S with a hypernym:

    chunk 0   "dog, domestic dog, Canis familiaris (animal)."          the title: the only chunk naming S
    then, in a seeded per-document order:
      kind       "It is a kind of canine."                            (verbs: "It is a way to travel.")
      category   "It belongs to the category animal."
      definition "It means: a member of the genus Canis (probably descended from ...) ..."
      example    "For example: the ___ barked all night."             (S's lemmas masked; at most 2 examples)

and one query per non-title chunk that names S and asks for that aspect:

    kind       "What is dog a kind of?"               category  "Which category does dog belong to?"
    definition "What does dog mean?"                  example   "How is dog used in a sentence?"

Why context is required, measurably: the kind chunk of every co-hyponym of S (wolf, fox, jackal... for dog) and
the category chunk of every synset of S's lexicographer file are *the same text*, so an encoder that embeds
chunks alone gives them identical embeddings and can only rank S's one at random among them; the definition and
example chunks never name S (its lemmas are masked) and are only partly recoverable from their content. A model
that embeds chunks with late chunking sees the title in the same pass. `ambiguity` reports the fraction of
queries whose gold chunk text occurs in another document of the collection.

Only the first lemma names S in queries; two synsets sharing it (polysemy: "bank") give one query text with
several relevant chunks when the evaluation set merges identical queries. Chunks are capped at `max_words` words
(~32 tokens of the 4,096-id quickstart tokenizer), so a document is at most 6 chunks of about 32 tokens.
Synsets are split like every other WordNet dataset (`wordnet.split_of(key, fraction, seed)`), so the validation
documents describe synsets unseen in pretraining, pair and contextual training.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from collections.abc import Iterator
from typing import Sequence

from pplx_jax.data.sources import wordnet

__all__ = ["documents", "ambiguity", "ASPECTS"]

ASPECTS = ("kind", "category", "definition", "example")
_QUERIES = {
    "kind": {"n": "What is {} a kind of?", "v": "What is {} a way to do?"},
    "category": "Which category does {} belong to?",
    "definition": "What does {} mean?",
    "example": "How is {} used in a sentence?",
}
_CATEGORY = {"Tops": "top concept"}
MASK = "___"


def _category(syn: wordnet.Synset) -> str:
  name = syn.lexname.split(".", 1)[1]
  return _CATEGORY.get(name, name)


def _cap(text: str, max_words: int) -> str:
  words = text.split()
  return " ".join(words[:max_words]) + (" ..." if len(words) > max_words else "")


def _masker(lemmas: Sequence[str]):
  """Replaces every lemma of the synset (and its inflections: dog -> dogs) with MASK: chunks must not name S."""
  forms = sorted({l.lower() for l in lemmas}, key=len, reverse=True)
  pattern = re.compile(r"\b(?:" + "|".join(re.escape(f) for f in forms) + r")\w*", re.IGNORECASE)
  return lambda text: pattern.sub(MASK, text)


def _sentence(text: str) -> str:
  text = text.strip()
  return text if text[-1:] in ".!?" else text + "."


def _doc_seed(key: str, seed: int) -> int:
  return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(), "big")


def document(syn: wordnet.Synset, hypernym: wordnet.Synset, seed: int = 0, max_words: int = 24,
             max_examples: int = 2) -> dict:
  """One document record {"doc_id", "chunks", "queries": [{"text", "chunk"}]} for synset `syn`."""
  mask = _masker(syn.lemmas)
  name = syn.lemmas[0]
  parts = []
  hyper = hypernym.lemmas[0]
  parts.append(("kind", f"It is a kind of {hyper}." if syn.pos == "n" else f"It is a way to {hyper}."))
  parts.append(("category", f"It belongs to the category {_category(syn)}."))
  if syn.definition:
    parts.append(("definition", _cap(f"It means: {_sentence(mask(syn.definition))}", max_words)))
  for ex in syn.examples[:max_examples]:
    masked = mask(ex)
    if MASK in masked:  # an example that does not contain the lemma says nothing about S's usage
      parts.append(("example", _cap(f"For example: {_sentence(masked)}", max_words)))
  random.Random(_doc_seed(syn.key, seed)).shuffle(parts)
  title = _cap(f"{', '.join(syn.lemmas)} ({_category(syn)}).", max_words)
  chunks = [title] + [text for _, text in parts]
  queries, asked = [], set()
  for k, (aspect, _) in enumerate(parts, start=1):
    if aspect in asked:  # one query per aspect: a second example would have the same question
      continue
    asked.add(aspect)
    template = _QUERIES[aspect]
    template = template[syn.pos] if isinstance(template, dict) else template
    queries.append({"text": template.format(name), "chunk": k})
  return {"doc_id": syn.key, "chunks": chunks, "queries": queries}


def documents(split: str | None = None, validation_fraction: float = 0.05, seed: int = 0, limit: int | None = None,
              wordnet_dir: str | os.PathLike | None = None, pos: Sequence[str] = ("n", "v"),
              max_words: int = 24) -> Iterator[dict]:
  """The documents of `split` ("train", "validation" or None for all), in WordNet file order.

  `limit` keeps the first synsets (file order, before the split) for quick tests. Synsets without a hypernym
  (the top of each hierarchy) are left out: their kind chunk would say nothing.
  """
  synsets = list(wordnet.read_synsets(wordnet_dir, pos=tuple(pos)))
  by_key = {s.key: s for s in synsets}
  for n, syn in enumerate(synsets):
    if limit is not None and n >= limit:
      break
    hypers = [by_key[h] for h in syn.hypernym_keys if h in by_key]
    if not hypers:
      continue
    if split is not None and wordnet.split_of(syn.key, validation_fraction, seed) != split:
      continue
    yield document(syn, hypers[0], seed, max_words)


def ambiguity(records: Sequence[dict]) -> float:
  """Fraction of queries whose gold chunk's text is also a chunk of another document of `records`: for those a
  chunk-alone encoder cannot tell the gold chunk from its copies."""
  owners: dict[str, set] = {}
  for i, r in enumerate(records):
    for c in r["chunks"]:
      owners.setdefault(c, set()).add(i)
  total = shared = 0
  for i, r in enumerate(records):
    for q in r["queries"]:
      total += 1
      shared += len(owners[r["chunks"][q["chunk"]]]) > 1
  return shared / max(total, 1)
