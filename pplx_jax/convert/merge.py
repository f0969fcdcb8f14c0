"""`pplx-jax merge A B --t 0.5 --out DIR`: per-tensor SLERP of two checkpoints (paper §4.4, stage 3).

pplx-embed-v1 is the spherical linear interpolation of the contextual-training checkpoint and the triplet
checkpoint. The interpolation is mergekit's ``slerp`` (``mergekit/merge_methods/slerp.py``), per tensor:

    cos Ω = clip(<a/|a|, b/|b|>, -1, 1)                  (a, b flattened; |.| the Frobenius norm)
    slerp(a, b, t) = sin((1-t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b     (a, b the *unnormalised* tensors)
    slerp(a, b, t) = (1-t)·a + t·b                       where |cos Ω| > dot_threshold (0.9995)

What this means for the result's norm: for two orthogonal tensors of equal norm r the midpoint keeps norm r
(LERP would give r/√2); in general SLERP keeps the norm of equal-norm tensors at every t, while LERP shrinks it
by cos(Ω/2) at the midpoint. Nearly parallel (or anti-parallel) tensors, e.g. RMSNorm weights still close to
their all-ones init, fall back to LERP, where the two formulas agree to O(Ω²) anyway.

"Per tensor" means per *Hugging Face* tensor, as mergekit sees the exported model: our stacked layer weights
(``layers/*``, leading axis = layer) get one angle per layer, so merging here gives the same weights as running
mergekit on the two exported HF folders (our layouts are transposes/reshapes, which change no dot product or
norm).

Numerics: the angle comes from float64 sums; the weighted sum is computed in float32 (float64 for float64
inputs) and cast back to the input dtype. ``t == 0`` and ``t == 1`` return the endpoint itself (bit for bit),
skipping the formula: the formula gives the same values (sin Ω / sin Ω is exactly 1.0 in IEEE arithmetic and
sin 0 = 0), except that 0·b can turn a -0.0 of ``a`` into +0.0 and propagates a NaN/Inf of the other tensor.
A zero tensor has no direction: mergekit then leaves it unnormalised, so cos Ω = 0 (Ω = π/2); so do we.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pplx_jax.convert.load import resolve_model, source_params
from pplx_jax.core import checkpoint as ckpt
from pplx_jax.core import model_config
from pplx_jax.core.checkpoint import CheckpointError
from pplx_jax.core import paths
from pplx_jax.core.paths import staged_output

log = logging.getLogger(__name__)

DOT_THRESHOLD = 0.9995
EPS = 1e-8
_CHUNK = 1 << 22  # elements per float64 partial sum (bounds the temporary memory on huge tensors)

# Fields that change what the weights mean; the others (dtypes, remat, attention kernel, scan, max positions)
# are runtime choices and are taken from A.
ARCHITECTURE_FIELDS = model_config.ARCHITECTURE_FIELDS + ("attention",)


class MergeError(CheckpointError):
  """Two checkpoints that cannot be merged (different architecture or tensors), or bad merge arguments."""


# ---------------------------------------------------------------------------------------------
# The per-tensor formula


def _compute_dtype(*dtypes) -> np.dtype:
  return np.dtype(np.float64) if any(np.dtype(d) == np.float64 for d in dtypes) else np.dtype(np.float32)


def _dot64(x: np.ndarray, y: np.ndarray) -> float:
  """sum(x * y) accumulated in float64, in chunks (x, y flat)."""
  total = 0.0
  for s in range(0, x.size, _CHUNK):
    total += float(np.dot(x[s:s + _CHUNK].astype(np.float64), y[s:s + _CHUNK].astype(np.float64)))
  return total


def slerp_cos(a: np.ndarray, b: np.ndarray, eps: float = EPS) -> float:
  """cos Ω of mergekit's slerp: the clipped dot product of a/|a| and b/|b| (a tensor with |x| <= eps is
  left unnormalised, as mergekit's ``normalize`` does)."""
  x = np.ravel(a)
  y = np.ravel(b)
  na = np.sqrt(_dot64(x, x))
  nb = np.sqrt(_dot64(y, y))
  dot = _dot64(x, y)
  dot /= (na if na > eps else 1.0) * (nb if nb > eps else 1.0)
  return float(np.clip(dot, -1.0, 1.0))


def lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
  """(1 - t)·a + t·b, computed in float32 (float64 for float64 inputs), cast back to a's dtype."""
  a, b = np.asarray(a), np.asarray(b)
  cd = _compute_dtype(a.dtype, b.dtype)
  out = cd.type(1.0 - t) * a.astype(cd) + cd.type(t) * b.astype(cd)
  return out.astype(a.dtype)


def slerp(a: np.ndarray, b: np.ndarray, t: float, dot_threshold: float = DOT_THRESHOLD,
          eps: float = EPS) -> np.ndarray:
  """mergekit's per-tensor SLERP of `a` (t = 0) and `b` (t = 1); see the module docstring.

  The weights sin((1-t)Ω)/sin Ω and sin(tΩ)/sin Ω (float64) multiply the original, unnormalised tensors;
  where |cos Ω| > `dot_threshold` the result is the linear interpolation. Returns a's dtype and shape;
  ``t == 0`` / ``t == 1`` return a copy of `a` / `b` exactly.
  """
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape:
    raise MergeError(f"cannot interpolate tensors of shapes {a.shape} and {b.shape}")
  t = float(t)
  if t == 0.0:
    return a.copy()
  if t == 1.0:
    return b.astype(a.dtype, copy=True)
  return _slerp_given_cos(a, b, t, slerp_cos(a, b, eps), dot_threshold)


def _slerp_given_cos(a: np.ndarray, b: np.ndarray, t: float, cos: float, dot_threshold: float) -> np.ndarray:
  if abs(cos) > dot_threshold:
    return lerp(a, b, t)
  omega = np.arccos(cos)
  sin_omega = np.sin(omega)
  s0 = np.sin((1.0 - t) * omega) / sin_omega
  s1 = np.sin(t * omega) / sin_omega
  cd = _compute_dtype(a.dtype, b.dtype)
  out = cd.type(s0) * a.astype(cd) + cd.type(s1) * b.astype(cd)
  return out.astype(a.dtype)


# ---------------------------------------------------------------------------------------------
# Parameter trees


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(_flatten(v, name + "/"))
    else:
      out[name] = np.asarray(v)
  return out


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for name, v in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return tree


def _check_same_tensors(fa: Mapping[str, np.ndarray], fb: Mapping[str, np.ndarray], a_name: str,
                        b_name: str) -> None:
  only_a = sorted(set(fa) - set(fb))
  only_b = sorted(set(fb) - set(fa))
  if only_a or only_b:
    parts = []
    if only_a:
      parts.append(f"tensor {only_a[0]!r} is in {a_name} but not in {b_name}"
                   + (f" (and {len(only_a) - 1} more)" if len(only_a) > 1 else ""))
    if only_b:
      parts.append(f"tensor {only_b[0]!r} is in {b_name} but not in {a_name}"
                   + (f" (and {len(only_b) - 1} more)" if len(only_b) > 1 else ""))
    raise MergeError("the checkpoints hold different tensors: " + "; ".join(parts))
  for name in sorted(fa):
    if fa[name].shape != fb[name].shape:
      raise MergeError(f"tensor {name!r} has shape {tuple(fa[name].shape)} in {a_name} but "
                       f"{tuple(fb[name].shape)} in {b_name}")


def slerp_tree(a: Mapping[str, Any], b: Mapping[str, Any], t: float, *, num_layers: int | None = None,
               dot_threshold: float = DOT_THRESHOLD, eps: float = EPS,
               stats: dict | None = None) -> dict[str, Any]:
  """SLERP of two nested parameter dicts with the same tensors.

  With `num_layers`, tensors under ``layers/`` whose leading axis has that size are stacked per-layer weights
  and are interpolated one layer slice at a time (one angle per layer, as mergekit on the HF tensors).
  `stats` (optional, filled in place): ``tensors`` (number of per-tensor interpolations), ``lerp`` (names of
  the tensors that fell back to linear interpolation, ``name[layer]`` for a layer slice), ``cos`` (name ->
  cos Ω).
  """
  fa, fb = _flatten(a), _flatten(b)
  _check_same_tensors(fa, fb, "A", "B")
  stats = {} if stats is None else stats
  stats.setdefault("tensors", 0)
  stats.setdefault("lerp", [])
  stats.setdefault("cos", {})

  def one(name, x, y):
    stats["tensors"] += 1
    if not 0.0 < t < 1.0:
      return slerp(x, y, t, dot_threshold, eps)  # an endpoint, exactly
    cos = slerp_cos(x, y, eps)
    stats["cos"][name] = cos
    if abs(cos) > dot_threshold:
      stats["lerp"].append(name)
    return _slerp_given_cos(x, y, t, cos, dot_threshold)

  out = {}
  for name in fa:
    x, y = fa[name], fb[name]
    if num_layers is not None and name.startswith("layers/") and x.ndim >= 1 and x.shape[0] == num_layers:
      out[name] = np.stack([one(f"{name}[{i}]", x[i], y[i]) for i in range(num_layers)]).astype(x.dtype)
    else:
      out[name] = one(name, x, y)
  return _unflatten(out)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _check_configs(cfg_a, cfg_b, a_name: str, b_name: str) -> None:
  for f in ARCHITECTURE_FIELDS:
    va, vb = getattr(cfg_a, f), getattr(cfg_b, f)
    if va != vb:
      raise MergeError(f"model config field {f!r} differs: {va!r} in {a_name} but {vb!r} in {b_name}; "
                       "only checkpoints of the same architecture can be merged")


def _tokenizer_signature(tok_dir: Path | None) -> bytes | None:
  if tok_dir is None:
    return None
  for name in ("tokenizer.json", "tokenizer.model"):
    if (tok_dir / name).is_file():
      data = (tok_dir / name).read_bytes()
      if name == "tokenizer.json":
        try:  # compare the vocabulary and merges, not the formatting
          data = json.dumps(json.loads(data).get("model"), sort_keys=True).encode()
        except (ValueError, AttributeError):
          pass
      return data
  return None


def merge_checkpoints(a_path: str | os.PathLike, b_path: str | os.PathLike, t: float,
                      out_dir: str | os.PathLike, *, dot_threshold: float = DOT_THRESHOLD,
                      eps: float = EPS) -> Path:
  """SLERP(A, B, t) of two models -> a pplx-jax workdir at `out_dir` (checkpoint step 0).

  A and B are any model paths :func:`pplx_jax.core.checkpoint.resolve` accepts (HF / sentence-transformers
  folders, checkpoint steps, workdirs). They must agree on :data:`ARCHITECTURE_FIELDS` and hold the same
  tensors with the same shapes (a :class:`MergeError` names the field or tensor). The output takes A's
  tokenizer (B's if A has none), A's runtime config fields and A's parameter dtypes; its ``config.json``
  records the merge (method, t, threshold, both sources, the tensors that fell back to LERP). It is written
  into a temporary sibling and renamed into place when complete.
  """
  t = float(t)
  if not 0.0 <= t <= 1.0:
    raise MergeError(f"t must be in [0, 1] (0 gives A, 1 gives B), got {t}")
  if not 0.0 < dot_threshold <= 1.0:
    raise MergeError(f"dot_threshold must be in (0, 1], got {dot_threshold}")
  out = paths.as_path(out_dir)  # local or gs://
  if out.exists() and (not out.is_dir() or any(out.iterdir())):  # fail before loading two models
    raise FileExistsError(f"{out}: destination exists and is not empty; choose a new path")
  src_a, src_b = resolve_model(a_path), resolve_model(b_path)
  params_a, cfg_a, tok_a, extra_a = source_params(a_path)
  params_b, cfg_b, tok_b, extra_b = source_params(b_path)
  if src_a.kind == "hf" and extra_a.get("source_dtype") in ("float32", "bfloat16", "float16"):
    cfg_a = cfg_a.replace(param_dtype=extra_a["source_dtype"])  # as `convert --to jax`: keep the stored dtype
  a_name, b_name = f"A ({a_path})", f"B ({b_path})"
  _check_configs(cfg_a, cfg_b, a_name, b_name)
  _check_same_tensors(_flatten(params_a), _flatten(params_b), a_name, b_name)
  sig_a, sig_b = _tokenizer_signature(tok_a), _tokenizer_signature(tok_b)
  if sig_a is not None and sig_b is not None and sig_a != sig_b:
    log.warning("A and B have different tokenizers (same vocab_size); the merge keeps A's (%s)", tok_a)
  tok_dir = tok_a if tok_a is not None else tok_b
  if tok_dir is None:
    log.warning("neither A nor B has tokenizer files: the merged model has none")

  stats: dict = {}
  merged = slerp_tree(params_a, params_b, t, num_layers=cfg_a.num_layers, dot_threshold=dot_threshold, eps=eps,
                      stats=stats)
  record = {
      "method": "slerp",
      "t": t,
      "dot_threshold": dot_threshold,
      "sources": [{"path": str(a_path), "resolved": str(paths.absolute(src_a.path)), "kind": src_a.kind, "t": 0.0},
                  {"path": str(b_path), "resolved": str(paths.absolute(src_b.path)), "kind": src_b.kind, "t": 1.0}],
      "tensors": stats["tensors"],
      "lerp_tensors": stats["lerp"],
  }
  extra = {k: v for k, v in extra_a.items() if k in ("source_dtype",)}
  extra["merge"] = {k: record[k] for k in ("method", "t", "dot_threshold")}
  extra["merge"]["sources"] = [s["resolved"] for s in record["sources"]]
  with staged_output(out_dir) as tmp:
    ckpt.save(tmp, 0, merged, cfg_a, extra=extra)
    if tok_dir is not None:
      ckpt.copy_tokenizer(tok_dir, tmp / ckpt.TOKENIZER)
    (tmp / "config.json").write_text(json.dumps({"model": cfg_a.to_dict(), "merge": record}, indent=2))
  return out
