"""Retrieval metrics vs hand computations and a brute-force loop, pair/triplet data, and mteb agreement."""

import itertools
import json
import math

import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.data import prepared
from pplx_jax.data.records import DataError
from pplx_jax.data.sources import wordnet
from pplx_jax.eval import metrics as R
from pplx_jax.eval import retrieval
from pplx_jax.stages.contrastive import data as pair_data
from pplx_jax.stages.contrastive import evalset as pair_evalset
from pplx_jax.stages.contrastive import prepare as pair_prepare

# ---------------------------------------------------------------------------------------------
# Metrics


def test_hand_computed_example():
  # One query, five docs ranked d0 > d1 > d2 > d3 > d4; d1 and d3 are relevant (ranks 2 and 4).
  scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
  rel = {0: [1, 3]}
  dcg5 = 1 / math.log2(3) + 1 / math.log2(5)
  idcg5 = 1 + 1 / math.log2(3)  # two relevant docs at ranks 1 and 2
  assert R.ndcg_at_k(scores, rel, 5) == pytest.approx(dcg5 / idcg5)
  assert R.ndcg_at_k(scores, rel, 5) == pytest.approx(0.6509209, abs=1e-7)
  assert R.ndcg_at_k(scores, rel, 2) == pytest.approx((1 / math.log2(3)) / idcg5)
  assert R.ndcg_at_k(scores, rel, 1) == 0.0
  assert [R.recall_at_k(scores, rel, k) for k in (1, 2, 3, 4)] == [0.0, 0.5, 0.5, 1.0]
  assert R.mrr(scores, rel) == 0.5 and R.mrr(scores, rel, 1) == 0.0 and R.mrr(scores, rel, 2) == 0.5
  # A second query with no relevant doc is left out of every mean (trec_eval's convention).
  two = np.vstack([scores, scores])
  assert R.ndcg_at_k(two, {0: [1, 3]}, 5) == pytest.approx(dcg5 / idcg5)
  assert R.ndcg_at_k(two, [[1, 3], [1, 3]], 5, per_query=True).shape == (2,)
  with pytest.raises(R.EvalError, match="no query has a relevant document"):
    R.ndcg_at_k(scores, {}, 5)


def test_ties_rank_by_ascending_doc_index():
  scores = np.array([[0.5, 0.5, 0.9, 0.5, 0.5]])
  assert R.rank_documents(scores).tolist() == [[2, 0, 1, 3, 4]]
  # doc 3 ties with docs 0, 1, 4: rank = 1 (doc 2 higher) + 2 (docs 0, 1 tied with smaller index) + 1
  assert [r.tolist() for r in R.relevant_ranks(scores, [[3]])] == [[4]]
  assert R.mrr(scores, [[4]]) == pytest.approx(1 / 5)
  # NaN scores rank last
  assert R.rank_documents(np.array([[np.nan, 0.1, 0.2]])).tolist() == [[2, 1, 0]]


def _brute_force(scores, rel_lists, k):
  ndcgs, recalls, rrs = [], [], []
  for q in range(scores.shape[0]):
    rel = set(rel_lists[q])
    if not rel:
      continue
    order = sorted(range(scores.shape[1]), key=lambda d: (-scores[q, d], d))
    dcg = 0.0
    hits = 0
    rr = 0.0
    for rank, d in enumerate(order, start=1):
      if d in rel:
        if rank <= k:
          dcg += 1.0 / math.log2(rank + 1)
          hits += 1
          if rr == 0.0:
            rr = 1.0 / rank
    idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(k, len(rel)) + 1))
    ndcgs.append(dcg / idcg)
    recalls.append(hits / len(rel))
    rrs.append(rr)
  return np.mean(ndcgs), np.mean(recalls), np.mean(rrs)


def test_matches_brute_force_double_loop_in_every_qrels_form():
  rng = np.random.default_rng(0)
  q, n = 40, 60
  scores = rng.integers(0, 6, size=(q, n)).astype(np.float32)  # many ties on purpose
  rel_lists = [sorted(rng.choice(n, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(q)]
  forms = {
      "list": rel_lists,
      "dict": {i: r for i, r in enumerate(rel_lists) if r},
      # graded values: > 0 relevant, 0 judged not relevant
      "graded": {i: {d: 2 for d in r} | ({} if 0 in r else {0: 0}) for i, r in enumerate(rel_lists)},
      "matrix": np.array([[d in r for d in range(n)] for r in rel_lists]),
  }
  for k in (1, 5, 10, 60):
    want = _brute_force(scores, rel_lists, k)
    for name, rel in forms.items():
      got = (R.ndcg_at_k(scores, rel, k), R.recall_at_k(scores, rel, k), R.mrr(scores, rel, k))
      np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=f"{name} k={k}")
  # one relevant doc per query as a 1-D index array (-1: none)
  single = np.array([r[0] if r else -1 for r in rel_lists])
  np.testing.assert_allclose(R.ndcg_at_k(scores, single, 10),
                             _brute_force(scores, [[d] if d >= 0 else [] for d in single], 10)[0], rtol=1e-12)
  with pytest.raises(R.EvalError, match="outside 0..59"):
    R.ndcg_at_k(scores, {0: [60]}, 10)


def test_dtypes_and_matryoshka():
  rng = np.random.default_rng(1)
  qe = rng.normal(size=(30, 20)).astype(np.float32)
  de = rng.normal(size=(50, 20)).astype(np.float32)
  rel = rng.integers(0, 50, size=30)
  ks = (1, 10)
  out = R.retrieval_scores(qe, de, rel, ks, "float32", dims=(8, None))
  assert set(out) == {f"float32/{d}/{m}@{k}" for d in ("8", "full") for m in ("ndcg", "recall", "mrr") for k in ks}

  def cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T

  assert out["float32/full/ndcg@10"] == pytest.approx(_brute_force(cos(qe.astype(float), de.astype(float)),
                                                                   [[d] for d in rel], 10)[0])
  assert out["float32/8/recall@10"] == pytest.approx(_brute_force(cos(qe[:, :8].astype(float),
                                                                      de[:, :8].astype(float)),
                                                                  [[d] for d in rel], 10)[1])
  # int8: cosine over the codes round(127 tanh(x)) of the prefix
  qi, di = (np.round(127 * np.tanh(x[:, :12])).astype(np.int8) for x in (qe, de))
  got = R.retrieval_scores(qe, de, rel, ks, "int8", dims=12)
  want = _brute_force(cos(qi.astype(float), di.astype(float)), [[d] for d in rel], 10)
  assert got["int8/12/ndcg@10"] == pytest.approx(want[0]) and got["int8/12/mrr@10"] == pytest.approx(want[2])
  assert R.retrieval_scores(qi, di, rel, ks, "int8")["int8/full/ndcg@10"] == pytest.approx(want[0])
  # binary: number of equal sign bits, via packed bits (dim 12: 4 pad bits per code never differ)
  qb, db = (np.packbits(x[:, :12] >= 0, axis=1) for x in (qe, de))
  ham = R.hamming_similarity(qb, db, 12)
  loop = np.array([[int(np.sum((qe[i, :12] >= 0) == (de[j, :12] >= 0))) for j in range(50)] for i in range(30)])
  assert np.array_equal(ham, loop)
  got = R.retrieval_scores(qe, de, rel, ks, "binary", dims=12)
  assert got["binary/12/ndcg@10"] == pytest.approx(_brute_force(loop.astype(float), [[d] for d in rel], 10)[0])
  with pytest.raises(R.EvalError, match="exceeds the embedding size 20"):
    R.retrieval_scores(qe, de, rel, ks, "float32", dims=(64,))
  with pytest.raises(R.EvalError, match="unknown embedding dtype"):
    R.retrieval_scores(qe, de, rel, ks, "int4")
  table = R.format_table({**out, **got})
  assert table.splitlines()[0] == "| dtype | dim | nDCG@1 | nDCG@10 | R@1 | R@10 | MRR@1 | MRR@10 |"
  assert "| binary | 12 |" in table and len(table.splitlines()) == 5


# ---------------------------------------------------------------------------------------------
# Pair and triplet data


BAD_RECORDS = [
    ("pair", "{not json", "invalid JSON"),
    ("pair", '["a list"]', "expected a JSON object"),
    ("pair", '{"positive": "p"}', "no 'query' field"),
    ("pair", '{"query": "q", "positive": 3}', "'positive' is a int, not a string"),
    ("pair", '{"query": "  ", "positive": "p"}', "'query' is empty"),
    ("triplet", '{"query": "q", "positive": "p"}', "no 'negatives' field"),
    ("triplet", '{"query": "q", "positive": "p", "negatives": "n"}', "non-empty list of strings"),
    ("triplet", '{"query": "q", "positive": "p", "negatives": []}', "empty list"),
    ("triplet", '{"query": "q", "positive": "p", "negatives": ["n", 4]}', r"negatives\[1\] is a int"),
    ("triplet", '{"query": "q", "positive": "p", "negatives": ["n", ""]}', r"negatives\[1\] is empty"),
]


def _triplets(n):
  return [{"query": f"query {i}", "positive": f"document {i}", "negatives": [f"neg {i} {j}" for j in range(1 + i % 3)],
           "extra": i} for i in range(n)]


def test_prepare_errors_name_file_and_line_then_skip(tmp_path):
  good = json.dumps(_triplets(1)[0])
  for i, (kind, bad, msg) in enumerate(BAD_RECORDS):
    path = tmp_path / f"bad{i}.jsonl"
    path.write_text(good + "\n\n" + bad + "\n")
    with pytest.raises(DataError, match=f"{path}:3: .*{msg}"):
      pair_prepare.prepare_pairs(path, tmp_path / "out", kind=kind)
  assert not (tmp_path / "out").exists()  # nothing written before validation passed
  with pytest.raises(DataError, match=r"x.txt: pairs and triplets are read from .jsonl or .parquet"):
    (tmp_path / "x.txt").write_text("a\n")
    pair_prepare.prepare_pairs(tmp_path / "x.txt", tmp_path / "out")
  # skip mode: count the bad records by reason, keep the good ones
  lines = [json.dumps(r) for r in _triplets(30)] + [bad for kind, bad, _ in BAD_RECORDS]
  (tmp_path / "mixed.jsonl").write_text("\n".join(lines) + "\n")
  d = pair_prepare.prepare_pairs(tmp_path / "mixed.jsonl", tmp_path / "out", kind="triplet", on_error="skip",
                                 validation_fraction=0.2)
  meta = prepared.dataset_metadata(d)
  assert meta["skipped"] == {"invalid_json": 2, "missing_field": 2, "non_string_field": 1, "empty_text": 1,
                             "invalid_negatives": 4}
  sizes = prepared.split_sizes(d)
  assert sizes["train"] + sizes["validation"] == 30


def test_triplets_from_parquet_split_by_query(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  recs = _triplets(40)
  pq.write_table(pa.Table.from_pylist(recs), tmp_path / "t.parquet")
  d = pair_prepare.prepare_pairs(tmp_path / "t.parquet", tmp_path / "out", kind="triplet", validation_fraction=0.25)
  assert d == tmp_path / "out" / "triplets" / "1.0.0"
  by_query = {r["query"]: r for r in recs}
  for split in ("train", "validation"):
    got = pair_evalset.read_pairs(d, split)
    assert got and all(wordnet.split_of(r["query"], 0.25, 0) == split for r in got)
    for r in got:
      assert r == {k: by_query[r["query"]][k] for k in ("query", "positive", "negatives")}
  # same inputs + parameters: reused; different parameters: refused
  assert pair_prepare.prepare_pairs(tmp_path / "t.parquet", tmp_path / "out", kind="triplet",
                                    validation_fraction=0.25) == d
  with pytest.raises(FileExistsError, match="different dataset"):
    pair_prepare.prepare_pairs(tmp_path / "t.parquet", tmp_path / "out", kind="triplet", validation_fraction=0.5)
  # a retrieval set from the split: hard negatives are non-relevant corpus docs
  queries, docs, qrels = pair_evalset.pairs_retrieval_set(d, "validation")
  for q, rel in zip(queries, qrels):
    assert [docs[j] for j in rel] == [by_query[q]["positive"]]
    assert set(by_query[q]["negatives"]) <= set(docs)


def test_wordnet_pairs_and_held_out_retrieval_set(tmp_path):
  limit = 400
  ours = list(pair_prepare.wordnet_pairs(limit=limit))
  theirs = []
  synsets = {s.key for s in itertools.islice(wordnet.read_synsets(), limit)}
  for p in wordnet.retrieval_pairs():
    if p["synset"] not in synsets:
      break
    theirs.append(p)
  assert ours == theirs
  d = pair_prepare.prepare_wordnet_pairs(tmp_path, validation_fraction=0.1, limit=limit)
  val = prepared.load_split(d, "validation")
  keys = {r["source"].decode() for r in val.__getitems__(list(range(len(val))))}
  assert keys and all(wordnet.split_of(k, 0.1, 0) == "validation" for k in keys)
  train = prepared.load_split(d, "train")
  assert len(train) + len(val) == len(ours)
  # the held-out retrieval set: distinct docs, each query's relevant docs are its synsets' definitions
  queries, docs, qrels = pair_evalset.wordnet_retrieval_set("validation", validation_fraction=0.1, limit=limit)
  assert len(set(docs)) == len(docs) and len(set(queries)) == len(queries)
  want: dict[str, set[str]] = {}
  for p in ours:
    if wordnet.split_of(p["synset"], 0.1, 0) == "validation":
      want.setdefault(p["query"], set()).add(p["positive"])
  assert {q: {docs[j] for j in r} for q, r in zip(queries, qrels)} == want
  assert set(docs) == set().union(*want.values())
  # deterministic samples keep every sampled query's relevant docs
  kw = dict(validation_fraction=0.1, limit=limit, max_queries=10, max_docs=12, sample_seed=3)
  a, b = pair_evalset.wordnet_retrieval_set(**kw), pair_evalset.wordnet_retrieval_set(**kw)
  assert a == b and len(a[0]) == 10 and len(a[1]) >= 10
  assert all({a[1][j] for j in r} == want[q] for q, r in zip(a[0], a[2]))


def _pipeline(source, tok, **kw):
  kw = {"batch_size": 8, "query_len": 12, "doc_len": 24, "shard_index": 0, "shard_count": 1, **kw}
  return pair_data.PairPipeline(source, tok, **kw)


def test_pair_pipeline_determinism_resume_mixture_shards(wordnet_tokenizer):
  tok = wordnet_tokenizer
  a = [{"query": f"alpha {i}", "positive": f"the first dataset, record {i}"} for i in range(40)]
  b = [{"query": f"beta {i}", "positive": f"the second dataset, record {i}"} for i in range(120)]
  p = _pipeline([a, b], tok, weights=[1, 3], seed=5)
  batches = [next(p) for _ in range(8)]
  batch = batches[0]
  assert batch["q_ids"].shape == (8, 12) and batch["d_ids"].shape == (8, 24) and batch["q_ids"].dtype == np.int32
  # tokens are the tokenizer's, truncated and padded; the mask marks them
  ds, = np.unique(batch["dataset"][:1])
  first_q = batch["q_ids"][0][batch["q_mask"][0] == 1].tolist()
  texts = [r["query"] for r in (a if ds == 0 else b)]
  assert first_q in [tok.encode(t)[:12] for t in texts]
  assert np.all(batch["q_ids"][batch["q_mask"] == 0] == tok.pad_id)
  # mixture: weights 1:3 -> exactly a quarter from the first dataset over 64 examples
  counts = np.bincount(np.concatenate([x["dataset"] for x in batches]), minlength=2)
  assert counts.tolist() == [16, 48]
  # same seed, same batches; resume from a JSON-round-tripped state
  q = _pipeline([a, b], tok, weights=[1, 3], seed=5)
  for x in batches[:3]:
    y = next(q)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  state = json.loads(json.dumps(q.get_state()))
  r = _pipeline([a, b], tok, weights=[1, 3], seed=5)
  r.set_state(state)
  for x in batches[3:]:
    y = next(r)
    assert all(np.array_equal(x[k], y[k]) for k in x)
  with pytest.raises(ValueError, match="batch_size=8 vs 4"):
    _pipeline([a, b], tok, weights=[1, 3], seed=5, batch_size=4).set_state(state)
  other = next(_pipeline([a, b], tok, weights=[1, 3], seed=6))
  assert not np.array_equal(other["q_ids"], batch["q_ids"])
  # per-process shards: disjoint, together one epoch
  seen = []
  for shard in range(2):
    s = _pipeline(a, tok, batch_size=4, num_epochs=1, shard_index=shard, shard_count=2)
    ids = [tuple(row[m == 1]) for x in s for row, m in zip(x["q_ids"], x["q_mask"])]
    assert len(ids) == 20
    seen.append(set(ids))
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40


def test_triplet_pipeline_shapes(tmp_path, wordnet_tokenizer):
  d = tmp_path / "t.jsonl"
  d.write_text("\n".join(json.dumps(r) for r in _triplets(24)) + "\n")
  ds = pair_prepare.prepare_pairs(d, tmp_path / "out", kind="triplet", validation_fraction=0.0)
  source = prepared.load_split(ds, "train")
  p = _pipeline(source, wordnet_tokenizer, batch_size=4, kind="triplet", num_negatives=3, negative_len=16)
  batch = next(p)
  assert batch["n_ids"].shape == (4, 3, 16) and batch["n_mask"].shape == (4, 3, 16)
  assert batch["n_mask"].sum(-1).min() > 0
  for i in range(4):
    q = wordnet_tokenizer.decode(batch["q_ids"][i][batch["q_mask"][i] == 1].tolist())
    rec = next(r for r in _triplets(24) if r["query"] == q)
    negs = [wordnet_tokenizer.decode(batch["n_ids"][i, j][batch["n_mask"][i, j] == 1].tolist()) for j in range(3)]
    assert negs == [rec["negatives"][j % len(rec["negatives"])] for j in range(3)]  # first K, cycled
  p.close()


# ---------------------------------------------------------------------------------------------
# A model: ours vs mteb, and the CLI


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, wordnet_tokenizer):
  root = tmp_path_factory.mktemp("eval")
  wordnet_tokenizer.save(root / "tok")
  assert cli.main(["init", "--config", "configs/model/tiny.py", "--tokenizer", str(root / "tok"),
                   "--workdir", str(root / "model"), "--config.vocab_size=520", "--seed", "2"]) == 0
  return root / "model"


def test_mteb_ndcg_equals_ours(tiny_model):
  import mteb  # noqa: F401  (installed by setup.sh: a missing mteb fails, never skips)

  from pplx_jax.eval import mteb_adapter

  queries, docs, qrels = pair_evalset.wordnet_retrieval_set(validation_fraction=0.2, limit=1500, max_queries=150)
  enc = mteb_adapter.PplxEncoder(tiny_model, batch_size=64, max_length=64)
  emb = enc.embed_texts(queries + docs)
  ours = R.retrieval_scores(emb[:len(queries)], emb[len(queries):], qrels, (1, 10, 100), "float32")
  theirs = mteb_adapter.mteb_retrieval_scores(enc, queries, docs, qrels)
  for k in (1, 10, 100):
    assert theirs[f"ndcg_at_{k}"] == pytest.approx(ours[f"float32/full/ndcg@{k}"], abs=1e-4)
    assert theirs[f"recall_at_{k}"] == pytest.approx(ours[f"float32/full/recall@{k}"], abs=1e-4)
    assert theirs[f"mrr_at_{k}"] == pytest.approx(ours[f"float32/full/mrr@{k}"], abs=1e-4)
  assert 0 < ours["float32/full/ndcg@10"] < 1
  # int8 embeddings through mteb's cosine == ours (cosine over the codes)
  enc.dtype = "int8"
  theirs8 = mteb_adapter.mteb_retrieval_scores(enc, queries, docs, qrels)
  ours8 = R.retrieval_scores(emb[:len(queries)], emb[len(queries):], qrels, (10,), "int8")
  assert theirs8["ndcg_at_10"] == pytest.approx(ours8["int8/full/ndcg@10"], abs=1e-4)
  # binary (Hamming) scores tie often: mteb/pytrec_eval rank ties by doc id descending, we by index ascending.
  # Reversing the corpus order turns our rule into theirs, and then the numbers agree.
  enc.dtype = "binary"
  theirs_b = mteb_adapter.mteb_retrieval_scores(enc, queries, docs, qrels)
  n = len(docs)
  ours_b = R.retrieval_scores(emb[:len(queries)], emb[len(queries):][::-1], [[n - 1 - j for j in r] for r in qrels],
                              (10,), "binary")
  assert theirs_b["ndcg_at_10"] == pytest.approx(ours_b["binary/full/ndcg@10"], abs=1e-4)
  assert theirs_b["mrr_at_10"] == pytest.approx(ours_b["binary/full/mrr@10"], abs=1e-4)


def test_eval_cli_on_prepared_pairs(tiny_model, tmp_path, capsys):
  d = pair_prepare.prepare_wordnet_pairs(tmp_path / "data", validation_fraction=0.1, limit=300)
  out = tmp_path / "res.json"
  args = ["eval", "--model", str(tiny_model), "--data", str(d), "--dtypes", "float32", "binary",
          "--dims", "32", "full", "--ks", "1", "10", "--max-queries", "20", "--max-length", "32", "--json", str(out)]
  assert cli.main(args) == 0
  printed = capsys.readouterr().out
  assert "| dtype | dim | nDCG@1 | nDCG@10 |" in printed and "| binary | 32 |" in printed
  report = json.loads(out.read_text())
  assert report["num_queries"] == 20 and report["dims"] == ["32", "full"]
  assert set(report["metrics"]) == {f"{t}/{d}/{m}@{k}" for t in ("float32", "binary") for d in ("32", "full")
                                    for m in ("ndcg", "recall", "mrr") for k in (1, 10)}
  # the same numbers from the Python API
  queries, docs, qrels = pair_evalset.pairs_retrieval_set(d, "validation", 20)
  api = retrieval.evaluate_model(tiny_model, queries, docs, qrels, ("float32",), (None,), (10,), max_length=32)
  assert api["float32/full/ndcg@10"] == pytest.approx(report["metrics"]["float32/full/ndcg@10"], abs=1e-6)
  bad = ["eval", "--model", str(tiny_model), "--data", str(d), "--dims", "1000", "--max-queries", "5"]
  assert cli.main(bad) == 2
