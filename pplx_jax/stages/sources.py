"""Where a stage's training data comes from: `data.source` / `data.sources` entries are either a prepared dataset
directory (`pplx-jax prepare`) or the name of a built-in source that is prepared on first use in `data.dir`.

Built-in sources: `wordnet`, `apt` (Debian package descriptions), `pydoc` (the standard library's docstrings) in
every stage that has them, `*_triplets` for hard negatives; Debian's man pages are evaluation-only and have none.
One table for every stage, so adding a source (a new local corpus) is one entry here plus its `prepare` function in
the stage's folder. Built-in sources are split with the same `data.validation_fraction` and `data.split_seed` in
every stage, so held-out synsets stay held out from pretraining to the last contrastive stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import ml_collections


def _limit(data: ml_collections.ConfigDict) -> int | None:
  return int(data.get("wordnet_limit", 0) or 0) or None


def _split(data: ml_collections.ConfigDict) -> dict:
  return dict(validation_fraction=float(data.validation_fraction), seed=int(data.split_seed))


def _pretrain_wordnet(data):
  from pplx_jax.stages.pretrain.prepare import prepare_wordnet
  return prepare_wordnet(data.dir, **_split(data), limit=_limit(data))


def _pair_wordnet(data):
  from pplx_jax.stages.contrastive.prepare import prepare_wordnet_pairs
  return prepare_wordnet_pairs(data.dir, **_split(data), limit=_limit(data))


def _triplet_wordnet(data):
  from pplx_jax.stages.contrastive.prepare import prepare_wordnet_triplets
  return prepare_wordnet_triplets(data.dir, **_split(data), num_negatives=int(data.num_negatives),
                                  limit=_limit(data))


def _contextual_wordnet(data):
  from pplx_jax.stages.contextual.prepare import prepare_wordnet_contextual
  return prepare_wordnet_contextual(data.dir, **_split(data), limit=_limit(data))


def _on_error(data) -> str:
  return str(data.get("on_error", "raise") or "raise")


def _pretrain_local(names: list[str]):
  def prepare(data):
    from pplx_jax.stages.pretrain.prepare import prepare_local_text
    return prepare_local_text(data.dir, names, **_split(data), limit=_limit(data), on_error=_on_error(data))
  return prepare


def _pair_local(source: str, kind: str):
  def prepare(data):
    from pplx_jax.stages.contrastive.prepare import prepare_local_pairs
    return prepare_local_pairs(data.dir, source, **_split(data), limit=_limit(data), kind=kind,
                               num_negatives=int(data.get("num_negatives", 3)), on_error=_on_error(data))
  return prepare


# (stage, source name) -> prepare(data config) -> dataset directory. Pretraining also takes several local corpora
# joined by "+" ("wordnet+apt+pydoc": one dataset, each record split by its own corpus).
BUILTIN: dict[tuple[str, str], Callable[[ml_collections.ConfigDict], Path]] = {
    ("pretrain", "wordnet"): _pretrain_wordnet,
    ("pretrain", "apt"): _pretrain_local(["apt"]),
    ("pretrain", "pydoc"): _pretrain_local(["pydoc"]),
    ("contrastive", "wordnet"): _pair_wordnet,
    ("contrastive", "wordnet_triplets"): _triplet_wordnet,
    ("contrastive", "apt"): _pair_local("apt", "pair"),
    ("contrastive", "apt_triplets"): _pair_local("apt", "triplet"),
    ("contrastive", "pydoc"): _pair_local("pydoc", "pair"),
    ("contrastive", "pydoc_triplets"): _pair_local("pydoc", "triplet"),
    ("contextual", "wordnet"): _contextual_wordnet,
}


def _builtin(stage: str, source: str):
  prepare = BUILTIN.get((stage, source))
  if prepare is None and stage == "pretrain" and "+" in source:
    from pplx_jax.data.sources import local
    names = source.split("+")
    if all(n in local.TRAIN_SOURCES for n in names) and len(set(names)) == len(names):
      return _pretrain_local(names)
  return prepare


def dataset_dir(stage: str, source: str, data: ml_collections.ConfigDict) -> Path:
  """The prepared dataset behind `source` for `stage` (preparing a built-in source on first use)."""
  prepare = _builtin(stage, str(source))
  if prepare is not None:
    return prepare(data)
  from pplx_jax.data import prepared
  return prepared.resolve_dataset_dir(source)
