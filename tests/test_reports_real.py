"""Real TCGA pathology reports (``benchmarks/data/tcga_reports_sample.csv.gz``): metadata CSVs whose report
cells span lines at over 1 MB, and the report source's self-retrieval and polarity rules on real text,
with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from indexer.errors import UserError
from indexer.ingestion.metadata import read_metadata_csv

SAMPLE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "tcga_reports_sample.csv.gz"


@pytest.fixture(scope="module")
def real_rows() -> list[dict]:
    with gzip.open(SAMPLE, "rt", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_metadata_csv_over_1mb_with_multiline_report_cells_is_read_whole(real_rows, tmp_path):
    path = tmp_path / "meta.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "cancer_type", "report"])
        for r in real_rows[:600]:
            writer.writerow([r["slide_id"], r["cancer_type"], r["report"]])
    assert path.stat().st_size > 1 << 20 and sum("\n" in r["report"] for r in real_rows[:600]) > 500
    table = read_metadata_csv(path)
    assert table.num_rows == 600
    by_id = dict(zip(table.column("slide_id").to_pylist(), table.column("report").to_pylist()))
    assert all(by_id[r["slide_id"]] == r["report"] for r in real_rows[:600])  # line breaks kept, cell by cell


@pytest.mark.parametrize("body", [
    'slide_id,report\nS1,"an unterminated quote\nS2,fine\n',
    'slide_id,report\nS1,one,two,three\n',
])
def test_a_malformed_csv_is_refused_in_one_line(tmp_path, body):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(UserError) as failure:
        read_metadata_csv(path)
    assert "not a readable CSV" in str(failure.value) and len(str(failure.value).splitlines()) == 1


@pytest.fixture(scope="module")
def real_reports(real_rows, tmp_path_factory):
    """Report tables of 72 real reports (4 of each type) built by the index's own code."""
    from indexer.aggregation.bank import load_bank
    from indexer.reports.store import ReportConfig, build_reports
    from retrieval.query.report_search import ReportIndex

    picked = [r for t in sorted({r["cancer_type"] for r in real_rows})
              for r in [x for x in real_rows if x["cancer_type"] == t][:4]]
    root = tmp_path_factory.mktemp("real")
    table = pa.table({"slide_id": [r["slide_id"] for r in picked], "report": [r["report"] for r in picked]})
    rel = build_reports(root, 1, table, None, ReportConfig(), load_bank("general"))
    return ReportIndex.from_folder(root / rel), picked


def test_a_report_queried_by_its_own_text_ranks_itself_first(real_reports):
    reports, picked = real_reports
    source = reports.source
    firsts = []
    for i, r in enumerate(picked):
        q = source.parse(r["report"])
        assert not q.short and q.asserted == []  # a whole report asserts nothing: no polarity demotion
        scores = source.score(q)
        assert not scores.contradicts.any()
        firsts.append(source.report_slide[source.top(scores, 1)[0]] == r["slide_id"])
    assert all(firsts)


def test_polarity_demotes_reports_that_deny_what_a_short_query_asserts(real_reports):
    source = real_reports[0].source
    lexical = source.files.lexical
    denying, affirming = lexical.documents_with("neg_necrosi"), lexical.documents_with("necrosi")
    assert len(np.setdiff1d(denying, affirming)) and len(np.setdiff1d(affirming, denying))
    for text, bad, good in (("necrosis present", denying, affirming), ("no necrosis", affirming, denying)):
        q = source.parse(text)
        scores = source.score(q)
        ranked = source.top(scores, len(scores.fused)).tolist()
        assert set(np.flatnonzero(scores.contradicts)) == set(bad.tolist()) - set(good.tolist())
        worst_good = max(ranked.index(r) for r in good if r not in set(bad.tolist()))
        assert all(ranked.index(r) > worst_good for r in np.flatnonzero(scores.contradicts))
    hit = source.best_sentence(int(source.top(source.score(source.parse("necrosis present")), 1)[0]),
                               source.parse("necrosis present"))
    start, end = hit["highlights"][0]
    assert hit["sentence"][start:end].lower().startswith("necros")


def test_highlights_from_stored_words_equal_a_fresh_negex_pass(real_reports):
    from indexer.reports.lexical import stored_spans, tagged_spans

    sentences = real_reports[0].files.sentences
    texts, tokens = sentences.column("text").to_pylist(), sentences.column("tokens").to_pylist()
    assert len(texts) > 1000 and sum(" neg_" in f" {t}" for t in tokens) > 50
    for text, words in zip(texts, tokens):
        assert stored_spans(text, words.split()) == tagged_spans(text)
