"""Real hard-negative triplets from WordNet for the triplet stage at tiny scale.

query = a lemma or an example sentence, positive = its synset's definition, negatives = definitions of the
synset's co-hyponyms (other children of the same hypernym): close in meaning, wrong answers — hard negatives
found by structure rather than mined by a retriever. Only synsets of the training split are used, so the held-out
WordNet evaluation stays unseen.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

from pplx_jax.data import pairs, wordnet


def triplet_records(validation_fraction: float = 0.05, seed: int = 0, num_negatives: int = 3,
                    limit: int | None = None):
  synsets = list(wordnet.read_synsets())
  children: dict[str, list[str]] = {}
  for s in synsets:
    for h in s.hypernym_keys:
      children.setdefault(h, []).append(s.key)
  by_key = {s.key: s for s in synsets}
  rng = random.Random(seed)
  n = 0
  for s in synsets:
    if wordnet.split_of(s.key, validation_fraction, seed) != "train":
      continue
    siblings = sorted({c for h in s.hypernym_keys for c in children.get(h, []) if c != s.key})
    negs = [by_key[c].definition for c in siblings if by_key[c].definition != s.definition]
    if not negs:
      continue
    rng.shuffle(negs)
    negs = negs[:num_negatives]
    for q in list(s.lemmas) + list(s.examples):
      yield {"query": q, "positive": s.definition, "negatives": negs}
      n += 1
      if limit is not None and n >= limit:
        return


def prepare_wordnet_triplets(out_dir, validation_fraction: float = 0.05, seed: int = 0, num_negatives: int = 3,
                             limit: int | None = None) -> Path:
  """A prepared triplet dataset (TFDS ArrayRecord) at out_dir/wordnet_triplets/1.0.0."""
  out_dir = Path(out_dir)
  existing = out_dir / "wordnet_triplets" / "1.0.0"
  if (existing / "dataset_info.json").is_file():
    return existing
  out_dir.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
    path = Path(tmp) / "wordnet_triplets.jsonl"
    with open(path, "w") as f:
      for r in triplet_records(validation_fraction, seed, num_negatives, limit):
        f.write(json.dumps(r) + "\n")
    # The synset split above already holds out evaluation synsets; this split only carves a small in-domain check.
    return pairs.prepare_pairs([str(path)], out_dir, kind="triplet", name="wordnet_triplets",
                               validation_fraction=0.01, seed=seed)
