"""The local corpora a Debian machine carries, by name, and their one train/validation split.

``wordnet`` (:mod:`.wordnet`, Debian's wordnet-base), ``apt`` (:mod:`.apt`, package descriptions), ``pydoc``
(:mod:`.pydoc`, the standard library's docstrings) feed pretraining and the contrastive stages; ``manpages``
(:mod:`.manpages`) is held out for evaluation and never trained on.
"""

from __future__ import annotations

from pplx_jax.data.sources import wordnet

TRAIN_SOURCES = ("wordnet", "apt", "pydoc")
EVAL_ONLY = ("manpages",)


def split_of(source: str, key: str, validation_fraction: float, seed: int = 0) -> str:
  """The split of a local corpus record: WordNet's own (by synset key, unchanged), the others by their key (apt:
  the source package, pydoc: the module) namespaced by corpus, so every corpus's held-out keys are independent
  and a key is in one split in every stage that uses the same fraction and seed."""
  if source == "wordnet":
    return wordnet.split_of(key, validation_fraction, seed)
  return wordnet.split_of(f"{source}:{key}", validation_fraction, seed)
