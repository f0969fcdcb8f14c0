"""Text readers, TFDS ArrayRecord builders and the grain pretraining pipeline (real WordNet text)."""

from __future__ import annotations

import collections
import json
import logging

import numpy as np
import pytest

from pplx_jax import cli
from pplx_jax.data import prepared, records
from pplx_jax.data.prepared import load_split
from pplx_jax.data.records import DataError, iter_text_records
from pplx_jax.data.sources import wordnet
from pplx_jax.stages.pretrain import prepare as pretrain_prepare
from pplx_jax.stages.pretrain.data import PretrainPipeline, eval_batches
from pplx_jax.stages.pretrain.prepare import prepare_text_dataset

# ------------------------------------------------------------------------------------------------
# helpers


def _docs(n: int, start: int = 0) -> list[str]:
  # Real WordNet documents, plus non-ASCII text for the UTF-8 round trip.
  out = []
  for i, t in enumerate(wordnet.pretraining_texts()):
    if i >= start:
      out.append(t)
    if len(out) >= n:
      break
  out[0] = "déjà vu: ☃ 雪 — the feeling of having seen this before 🙂."
  return out


def _write_inputs(tmp_path):
  """A .txt, a .jsonl and a .parquet file; returns (paths, {(name, line): text})."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  docs = _docs(90)
  txt, jsonl, parquet = tmp_path / "a.txt", tmp_path / "b.jsonl", tmp_path / "c.parquet"
  txt.write_text("\n".join(docs[:30]) + "\n", encoding="utf-8")
  with open(jsonl, "w", encoding="utf-8") as f:
    for i, d in enumerate(docs[30:60]):
      f.write(json.dumps({"id": i, "text": d, "meta": {"x": 1}}, ensure_ascii=i % 2 == 0) + "\n")
  pq.write_table(pa.table({"text": docs[60:], "n": list(range(30))}), parquet, row_group_size=7)
  expected = {}
  for i, d in enumerate(docs[:30]):
    expected[(str(txt), i + 1)] = d
  for i, d in enumerate(docs[30:60]):
    expected[(str(jsonl), i + 1)] = d
  for i, d in enumerate(docs[60:]):
    expected[(str(parquet), i)] = d  # parquet: 0-based row index
  return [str(txt), str(jsonl), str(parquet)], expected


def _records(dataset_dir, split):
  ds = load_split(dataset_dir, split)
  out = {}
  for r in ds.__getitems__(list(range(len(ds)))):
    key = (r["source"].decode(), int(r["line"]))
    assert key not in out
    out[key] = r["text"].decode("utf-8")
  return out


# ------------------------------------------------------------------------------------------------
# text readers


def test_iter_text_records_formats_in_order(tmp_path):
  paths, expected = _write_inputs(tmp_path)
  got = list(iter_text_records(paths))
  assert [(s, l) for s, l, _ in got] == list(expected)  # file order, then line order
  assert {(s, l): t for s, l, t in got} == expected


def test_globs(tmp_path):
  _write_inputs(tmp_path)
  got = list(iter_text_records([str(tmp_path / "*.txt"), str(tmp_path / "*.jsonl")]))
  assert len(got) == 60
  with pytest.raises(FileNotFoundError, match=r"nothing\*\.jsonl"):
    list(iter_text_records([str(tmp_path / "*.txt"), str(tmp_path / "nothing*.jsonl")]))
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    list(iter_text_records(str(tmp_path / "missing.txt")))


BAD = {
    # name: (file name, content bytes, bad line, reason)
    "invalid_utf8": ("x.txt", b"good one\nbad \xff\xfe text\nanother good\n", 2, "invalid_utf8"),
    "invalid_utf8_jsonl": ("x.jsonl", b'{"text": "ok"}\n{"text": "\xc3("}\n', 2, "invalid_utf8"),
    "invalid_json": ("x.jsonl", b'{"text": "ok"}\n{"text": "ok"}\n{"text": oops}\n', 3, "invalid_json"),
    "not_an_object": ("x.jsonl", b'{"text": "ok"}\n["text"]\n', 2, "invalid_json"),
    "missing_field": ("x.jsonl", b'{"text": "ok"}\n{"body": "no text field"}\n', 2, "missing_field"),
    "null_field": ("x.jsonl", b'{"text": null}\n', 1, "missing_field"),
    "non_string_field": ("x.jsonl", b'{"text": "ok"}\n{"text": 42}\n', 2, "non_string_field"),
    "empty_text_jsonl": ("x.jsonl", b'{"text": "ok"}\n\n{"text": "  "}\n', 3, "empty_text"),
    "empty_line_txt": ("x.txt", b"one\n\nthree\n", 2, "empty_text"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_records_raise_with_file_and_line(tmp_path, kind):
  name, content, line, reason = BAD[kind]
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(DataError, match=rf"^{path}:{line}: ") as e:
    list(iter_text_records([str(path)]))
  assert (e.value.path, e.value.line, e.value.reason) == (str(path), line, reason)
  assert isinstance(e.value, ValueError)
  stats = {}
  good = list(iter_text_records([str(path)], on_error="skip", stats=stats))
  assert stats[reason] == 1 and stats["records"] == len(good)
  assert records.skipped(stats) == {reason: 1}


def test_bad_parquet_rows(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq

  path = tmp_path / "p.parquet"
  pq.write_table(pa.table({"text": ["fine", None, "", "also fine"]}), path)
  with pytest.raises(DataError, match=rf"^{path}:1: .*no 'text' field"):
    list(iter_text_records(path))
  stats = {}
  assert [t for _, _, t in iter_text_records(path, on_error="skip", stats=stats)] == ["fine", "also fine"]
  assert records.skipped(stats) == {"missing_field": 1, "empty_text": 1}
  pq.write_table(pa.table({"text": [1, 2]}), path)
  with pytest.raises(DataError, match=rf"^{path}:0: field 'text' is a int"):
    list(iter_text_records(path))
  # A missing column is not one bad record: it raises even in skip mode.
  with pytest.raises(DataError, match="no column 'body'"):
    list(iter_text_records(path, field="body", on_error="skip"))


# ------------------------------------------------------------------------------------------------
# TFDS builders


def test_prepare_text_dataset_splits_complete_and_disjoint(tmp_path):
  paths, expected = _write_inputs(tmp_path)
  out = prepare_text_dataset(paths, tmp_path / "data", validation_fraction=0.3, seed=3)
  assert out == tmp_path / "data" / "text" / "1.0.0"
  train, val = _records(out, "train"), _records(out, "validation")
  assert not set(train) & set(val)
  assert {**train, **val} == expected  # nothing lost, text round-trips (UTF-8 included)
  assert 10 <= len(val) <= 45
  for d in val.values():
    assert pretrain_prepare.text_split(d, 0.3, 3) == "validation"
  assert prepared.split_sizes(out) == {"train": len(train), "validation": len(val)}
  # The same inputs and parameters reuse the dataset; different ones are refused.
  assert prepare_text_dataset(paths, tmp_path / "data", validation_fraction=0.3, seed=3) == out
  with pytest.raises(FileExistsError, match="different dataset"):
    prepare_text_dataset(paths, tmp_path / "data", validation_fraction=0.3, seed=4)
  with pytest.raises(FileExistsError, match="different dataset"):
    prepare_text_dataset(paths[:2], tmp_path / "data", validation_fraction=0.3, seed=3)
  # A dataset directory given one level up resolves to its version.
  assert len(load_split(tmp_path / "data" / "text", "train")) == len(train)
  with pytest.raises(ValueError, match="no split 'test'"):
    load_split(out, "test")


def test_prepare_rejects_bad_records_before_writing(tmp_path):
  path = tmp_path / "x.jsonl"
  path.write_text('{"text": "fine"}\n' * 5 + '{"text": 3}\n')
  with pytest.raises(DataError, match=rf"^{path}:6: "):
    prepare_text_dataset([path], tmp_path / "data")
  assert not (tmp_path / "data" / "text" / "1.0.0").exists()
  with pytest.raises(ValueError, match="not valid"):
    prepare_text_dataset([path], tmp_path / "data", name="My Data")


def _cli(argv):
  return cli.main(["prepare", *argv])


def test_cli_skip_bad_records_counts_them(tmp_path, capsys, caplog):
  good = _docs(40)
  lines = [json.dumps({"text": d}) for d in good]
  lines[3] = '{"text": broken'
  lines[7] = '{"title": "no text"}'
  lines[11] = '{"text": ""}'
  path = tmp_path / "x.jsonl"
  path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xff"}\n')
  assert _cli(["--input", str(path), "--out", str(tmp_path / "data")]) == 2
  assert f"{path}:4: invalid JSON" in capsys.readouterr().err
  with caplog.at_level(logging.WARNING):
    assert _cli(["--input", str(path), "--out", str(tmp_path / "data"), "--skip-bad-records",
                 "--validation-fraction", "0.25"]) == 0
  printed = capsys.readouterr().out
  assert "skipped bad records: 4 (invalid_utf8: 1, invalid_json: 1, missing_field: 1, empty_text: 1)" in printed
  assert f"{path}:8" in caplog.text  # each skipped record is logged with file and line
  out = tmp_path / "data" / "text" / "1.0.0"
  assert prepared.dataset_metadata(out)["skipped"] == {"invalid_utf8": 1, "invalid_json": 1, "missing_field": 1,
                                                       "empty_text": 1}
  records = {**_records(out, "train"), **_records(out, "validation")}
  assert sorted(records.values()) == sorted(d for i, d in enumerate(good) if i not in (3, 7, 11))
  for split in ("train", "validation"):
    assert f"{split}: {len(_records(out, split))} records" in printed


def test_prepare_wordnet_splits_follow_split_of(tmp_path, capsys):
  n = 3000  # the full 117,659 synsets take ~18 s to write; same code path
  assert _cli(["--wordnet", "--limit", str(n), "--out", str(tmp_path), "--validation-fraction", "0.1"]) == 0
  out = tmp_path / "wordnet" / "1.0.0"
  assert str(out) in capsys.readouterr().out
  synsets = {s.key: s for s in _first_synsets(n)}
  seen = {}
  for split in ("train", "validation"):
    ds = load_split(out, split)
    for r in ds.__getitems__(list(range(len(ds)))):
      key = r["source"].decode()
      assert key not in seen
      seen[key] = split
      syn = synsets[key]
      assert r["text"].decode() == wordnet.pretraining_text(syn) and r["line"] == syn.offset
  assert seen == {k: wordnet.split_of(k, 0.1, 0) for k in synsets}
  assert 200 < sum(s == "validation" for s in seen.values()) < 400


def _first_synsets(n):
  out = []
  for s in wordnet.read_synsets():
    out.append(s)
    if len(out) == n:
      return out


# ------------------------------------------------------------------------------------------------
# grain pipeline

SEQ = 64


@pytest.fixture(scope="module")
def corpus_dir(wordnet_corpus, tmp_path_factory):
  return prepare_text_dataset([wordnet_corpus], tmp_path_factory.mktemp("data"), validation_fraction=0.1)


@pytest.fixture(scope="module")
def train_source(corpus_dir):
  return load_split(corpus_dir, "train")


def _texts(source):
  return [r["text"].decode() for r in source.__getitems__(list(range(len(source))))]


def _take(it, n):
  return [next(it) for _ in range(n)]


def _check_rows(batch, tok, seq_len=SEQ):
  """Segment structure of every row; returns the rows' real tokens in order."""
  ids, seg = batch["input_ids"], batch["segment_ids"]
  assert ids.dtype == np.int32 and seg.dtype == np.int32 and ids.shape == seg.shape == (ids.shape[0], seq_len)
  stream = []
  for row_ids, row_seg in zip(ids, seg):
    real = row_seg > 0
    n = int(real.sum())
    assert real[:n].all() and not real[n:].any(), "padding (0) only at the end of a row"
    assert (row_ids[n:] == tok.pad_id).all()
    if n:
      assert row_seg[0] == 1 and set(np.diff(row_seg[:n])) <= {0, 1}, "segments are 1, 2, ... within a row"
      # A segment never spans two documents: EOS only as the last token of a segment.
      for s in range(1, int(row_seg[n - 1]) + 1):
        tokens = row_ids[row_seg == s]
        assert tok.eos_id not in tokens[:-1]
        if s < row_seg[n - 1]:
          assert tokens[-1] == tok.eos_id, "a segment followed by another one ends its document"
    stream.extend(row_ids[:n].tolist())
  return stream


def _documents(stream, eos):
  docs, cur = [], []
  for t in stream:
    if t == eos:
      docs.append(tuple(cur))
      cur = []
    else:
      cur.append(t)
  assert not cur, "the stream ends with an EOS"
  return docs


def test_pipeline_rows_and_every_token_once_per_epoch(train_source, wordnet_tokenizer):
  tok = wordnet_tokenizer
  p = PretrainPipeline(train_source, tok, seq_len=SEQ, batch_size=8, seed=0, num_epochs=1,
                       shard_index=0, shard_count=1)
  stream, n_batches = [], 0
  for batch in p:
    stream.extend(_check_rows(batch, tok))
    n_batches += 1
  expected = collections.Counter(tuple(tok.encode_plain(t)) for t in _texts(train_source))
  assert collections.Counter(_documents(stream, tok.eos_id)) == expected
  total = sum(len(d) + 1 for d in expected.elements())
  assert n_batches == -(-total // (8 * SEQ))  # rows are full except the very last one


def test_pipeline_deterministic_by_seed_and_reshuffled_per_epoch(train_source, wordnet_tokenizer):
  tok = wordnet_tokenizer
  source = _texts(train_source)  # plain strings work as a source too

  def stream(seed, n=6):
    p = PretrainPipeline(source, tok, seq_len=SEQ, batch_size=4, seed=seed, shard_index=0, shard_count=1)
    return [b["input_ids"] for b in _take(p, n)]

  a, b, c = stream(0), stream(0), stream(1)
  assert all((x == y).all() for x, y in zip(a, b))
  assert any((x != y).any() for x, y in zip(a, c))
  # Epoch 2 is another permutation of the same documents.
  p = PretrainPipeline(source, tok, seq_len=1024, batch_size=8, seed=0, num_epochs=2, shard_index=0, shard_count=1)
  docs = _documents([t for batch in p for t in _check_rows(batch, tok, 1024)], tok.eos_id)
  n = len(source)
  assert len(docs) == 2 * n
  assert sorted(docs[:n]) == sorted(docs[n:]) and docs[:n] != docs[n:]


def test_shards_are_disjoint_and_complete(train_source, wordnet_tokenizer):
  tok = wordnet_tokenizer
  counts = []
  for shard in range(2):
    p = PretrainPipeline(train_source, tok, seq_len=SEQ, batch_size=8, seed=5, num_epochs=1,
                         shard_index=shard, shard_count=2)
    counts.append(collections.Counter(_documents([t for b in p for t in _check_rows(b, tok)], tok.eos_id)))
  expected = collections.Counter(tuple(tok.encode_plain(t)) for t in _texts(train_source))
  assert counts[0] + counts[1] == expected
  assert abs(sum(counts[0].values()) - sum(counts[1].values())) <= 1


@pytest.mark.parametrize("seq_len,skip", [(SEQ, 3), (16, 7), (256, 1)])
def test_state_restore_resumes_exactly(train_source, wordnet_tokenizer, seq_len, skip):
  tok = wordnet_tokenizer

  def make():
    return PretrainPipeline(train_source, tok, seq_len=seq_len, batch_size=4, seed=11, shard_index=0, shard_count=1)

  p = make()
  _take(p, skip)
  state = json.loads(json.dumps(p.get_state()))
  expected = _take(p, 5)
  q = make()
  q.set_state(state)
  for want, got in zip(expected, _take(q, 5)):
    for k in ("input_ids", "segment_ids"):
      np.testing.assert_array_equal(got[k], want[k])
  # Settings the position depends on must match.
  other = PretrainPipeline(train_source, tok, seq_len=seq_len, batch_size=4, seed=12, shard_index=0, shard_count=1)
  with pytest.raises(ValueError, match="seed=11 vs 12"):
    other.set_state(state)
  for x in (p, q, other):
    x.close()


def test_state_restore_at_every_step(train_source, wordnet_tokenizer):
  """Includes states where a row ended exactly at a document end (no partial document pending)."""
  tok = wordnet_tokenizer

  def make():  # synchronous (no threads): each restore only reads what it consumes
    return PretrainPipeline(train_source, tok, seq_len=1, batch_size=4, seed=1, shard_index=0, shard_count=1,
                            read_threads=0, prefetch_batches=0)

  full = _take(make(), 60)
  p, at_document_end = make(), 0
  for k in range(1, 58):
    next(p)
    state = json.dumps(p.get_state())
    at_document_end += '"remainder_slices": {"input_ids": [-1, -1]}' in state
    q = make()
    q.set_state(json.loads(state))
    for want, got in zip(full[k:k + 2], _take(q, 2)):
      np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
      np.testing.assert_array_equal(got["segment_ids"], want["segment_ids"])
  assert at_document_end > 0


def test_state_restore_across_epoch_boundary(train_source, wordnet_tokenizer):
  tok = wordnet_tokenizer

  def make():
    return PretrainPipeline(train_source, tok, seq_len=1024, batch_size=4, seed=2, shard_index=0, shard_count=1)

  p = make()
  full = _take(p, 34)  # an epoch is ~121k tokens: ~29.5 batches
  for k in (27, 29):
    q = make()
    _take(q, k)
    state = json.loads(json.dumps(q.get_state()))
    r = make()
    r.set_state(state)
    for want, got in zip(full[k:k + 4], _take(r, 4)):
      np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
      np.testing.assert_array_equal(got["segment_ids"], want["segment_ids"])


def test_eval_batches(corpus_dir, wordnet_tokenizer):
  tok = wordnet_tokenizer
  val = load_split(corpus_dir, "validation")
  a = list(eval_batches(val, tok, SEQ, 8, shard_index=0, shard_count=1))
  b = list(eval_batches(val, tok, SEQ, 8, shard_index=0, shard_count=1))
  assert len(a) == len(b) > 1 and all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, b))
  stream = [t for batch in a for t in _check_rows(batch, tok)]
  assert _documents(stream, tok.eos_id) == [tuple(tok.encode_plain(t)) for t in _texts(val)]  # record order
  short = list(eval_batches(val, tok, SEQ, 8, max_batches=2, shard_index=0, shard_count=1))
  assert len(short) == 2 and all((x["input_ids"] == y["input_ids"]).all() for x, y in zip(a, short))
  # With max_batches every process gets exactly that many (all-padding batches after its data).
  padded = list(eval_batches(val, tok, SEQ, 8, max_batches=len(a) + 2, shard_index=0, shard_count=1))
  assert len(padded) == len(a) + 2 and not padded[-1]["segment_ids"].any()
  assert (padded[-1]["input_ids"] == tok.pad_id).all()


def test_pipeline_argument_errors(wordnet_tokenizer):
  with pytest.raises(ValueError, match="shard_index"):
    PretrainPipeline(["a b"], wordnet_tokenizer, SEQ, 2, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="every shard needs a record"):
    PretrainPipeline(["a b"], wordnet_tokenizer, SEQ, 2, shard_index=0, shard_count=2)
  with pytest.raises(ValueError, match="not a pplx_jax"):
    PretrainPipeline(["a b"], wordnet_tokenizer, SEQ, 2, shard_index=0, shard_count=1).set_state({"x": 1})
