"""Report search on real TCGA pathology reports against simple baselines, and its speed.

Run: python -m benchmarks.reports_real [--csv benchmarks/data/tcga_reports_sample.csv.gz] [--tune] [--speed]
     [--first-query] [--sizes 1000,10000,100000] [--out /tmp/reports-real] [--json OUT]

Data: ``benchmarks/data/tcga_reports_sample.csv.gz`` (1,221 real reports, 18 TCGA types; sources and licences
in ``benchmarks/data/README.md``) or any CSV with slide_id, cancer_type and report columns. The reports are
split per type into a tune half and a held-out half (seeded); each half is indexed on its own
(``indexer/reports/store.py``, the real all-MiniLM-L6-v2). ``--tune`` grid-searches the fusion weights and
the dense pool on the tune half; every figure is reported on the held-out half. Methods: slidesearch's
report source (the ranking ``search_text(source="report")`` returns), BM25 over whole reports (bm25s, stemmed,
stop words), MiniLM cosine over whole reports, random. Metrics: report as query with itself excluded —
Acc@1 (top hit of the query's type) and mMV@5 (majority type of the top 5 is the query's; mean over types);
short queries (one or two per type) — P@10; negation probes — "X present" queries, share of the top 10
that are reports negating X and not affirming it (judged by regular expressions independent of
slidesearch's NegEx); self-retrieval — a report queried by its own text ranks itself first. 95 % bootstrap
CIs of the differences fused − baseline (queries resampled, 2,000 draws). ``--speed``: the held-out reports
tiled to each size (vectors jittered) and the report path of a text search timed (p50/p99 over short and
report-length queries, k = 10). ``--first-query``: a fresh process opens a 24-slide index (``--model tiny``)
with reports and runs its first report query. Indexing ms/report: the held-out half's build.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "data" / "tcga_reports_sample.csv.gz"
SHORT = {
    "BLCA": ["invasive urothelial carcinoma of the bladder"], "CESC": ["squamous cell carcinoma of the cervix"],
    "CHOL": ["intrahepatic cholangiocarcinoma"], "COAD": ["colonic adenocarcinoma invading pericolic fat"],
    "GBM": ["glioblastoma"], "HNSC": ["squamous cell carcinoma of the tongue or larynx"],
    "KICH": ["chromophobe renal cell carcinoma"], "KIRC": ["clear cell renal cell carcinoma"],
    "KIRP": ["papillary renal cell carcinoma"], "LGG": ["oligodendroglioma", "low grade astrocytoma"],
    "LIHC": ["hepatocellular carcinoma"], "LUAD": ["adenocarcinoma of the lung"],
    "LUSC": ["squamous cell carcinoma of the lung"], "OV": ["high grade serous carcinoma of the ovary"],
    "PAAD": ["pancreatic ductal adenocarcinoma"], "PRAD": ["prostatic adenocarcinoma, Gleason score"],
    "READ": ["rectal adenocarcinoma"], "UCEC": ["endometrioid adenocarcinoma of the endometrium"],
}
PROBES = ["lymphovascular invasion", "perineural invasion", "necrosis", "extracapsular extension",
          "vascular invasion", "angiolymphatic invasion", "carcinoma in situ", "lymph node metastasis"]
GRID_W = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
GRID_POOL = (10, 30, 100, 300)


def load(csv_path: Path) -> list[dict]:
    if not csv_path.is_file():
        sys.exit(f"reports_real: {csv_path} is missing (it ships in benchmarks/data/; or give --csv PATH with "
                 "slide_id, cancer_type, report columns)")
    opener = gzip.open if csv_path.suffix == ".gz" else open
    with opener(csv_path, "rt", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if (r.get("report") or "").strip()]
    return sorted(rows, key=lambda r: r["slide_id"])


def split(rows: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """Tune and held-out halves, each type split in two."""
    rng = np.random.default_rng(seed)
    tune, held = [], []
    for kind in sorted({r["cancer_type"] for r in rows}):
        group = [r for r in rows if r["cancer_type"] == kind]
        picked = set(rng.permutation(len(group))[: len(group) // 2].tolist())
        for i, r in enumerate(group):
            (tune if i in picked else held).append(r)
    return sorted(tune, key=lambda r: r["slide_id"]), sorted(held, key=lambda r: r["slide_id"])  # the index's order


def build(rows: list[dict], folder: Path) -> tuple[object, float, float]:
    """Index ``rows`` as report tables in ``folder``; (ReportIndex, seconds, seconds of which model load)."""
    import pyarrow as pa

    from indexer.aggregation.bank import load_bank
    from indexer.reports.store import ReportConfig, build_reports
    from retrieval.query.report_search import ReportIndex

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    table = pa.table({"slide_id": [r["slide_id"] for r in rows], "report": [r["report"] for r in rows]})
    t0 = time.perf_counter()
    rel = build_reports(folder, 1, table, None, ReportConfig(), load_bank("general"))
    seconds = time.perf_counter() - t0
    info = json.loads((folder / rel / "reports.json").read_text())
    return ReportIndex.from_folder(folder / rel), seconds, info["timings"]["load model"]


class Methods:
    """Score arrays (one per corpus report) of every method for a query text."""

    def __init__(self, reports, rows: list[dict], seed: int):
        import bm25s

        from indexer.reports.lexical import stemmer

        self.source, self.rows = reports.source, rows
        self.tokenize = lambda texts: bm25s.tokenize(texts, stopwords="en", stemmer=stemmer(), show_progress=False,
                                                     return_ids=False)
        self.bm25 = bm25s.BM25()
        self.bm25.index(self.tokenize([r["report"] for r in rows]), show_progress=False)
        self.rng = np.random.default_rng(seed)

    def views(self, text: str):
        q = self.source.parse(text)
        return q, self.source.score(q)

    def baselines(self, text: str, q) -> dict[str, np.ndarray]:
        tokens = [t for t in self.tokenize([text])[0] if t in self.bm25.vocab_dict]
        bm25 = self.bm25.get_scores(tokens) if tokens else np.zeros(len(self.rows))
        return {"BM25 whole report": np.asarray(bm25, np.float32), "MiniLM whole report": self.source.vectors @ q.vector,
                "random": self.rng.random(len(self.rows)).astype(np.float32)}


def ranking(scores: np.ndarray, exclude: int | None = None) -> np.ndarray:
    order = np.lexsort((np.arange(len(scores)), -scores))
    return order[order != exclude] if exclude is not None else order


def report_metrics(labels: np.ndarray, rankings: list[np.ndarray]) -> dict[str, float]:
    """Acc@1 and mMV@5 of report-as-query rankings (query i = report i, itself excluded)."""
    acc = np.asarray([labels[r[0]] == labels[i] for i, r in enumerate(rankings)], float)
    mv = np.asarray([_majority(labels[r[:5]]) == labels[i] for i, r in enumerate(rankings)], float)
    return {"acc@1": acc, "mv@5": mv}


def _majority(top: np.ndarray) -> str:
    values, counts = np.unique(top, return_counts=True)
    best = values[counts == counts.max()]
    return next(t for t in top if t in best)  # ties: the type ranked first


def macro(values: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean([values[labels == t].mean() for t in np.unique(labels)]))


def negated_only(text: str, finding: str) -> bool:
    """Whether a report denies ``finding`` and never affirms it (regular expressions, not slidesearch's NegEx):
    "no [≤3 words] X", "negative for X", "X: not identified / absent / negative / none" deny; "X: present /
    identified / seen", "positive for / with / shows / focal / extensive [≤2 words] X" affirm."""
    x = r"[\s\-]+".join(re.escape(w) for w in finding.split()) + r"(?:es|s)?"
    t = " ".join(text.split()).lower()
    verb = r"\s*(?:\([^)]*\))?\s*[:\-]?\s*(?:is |are |was |were )?"
    neg = re.search(rf"\b(?:no|negative for|without|absence of|free of|no evidence of)\s+(?:[a-z\-]+\s+){{0,3}}?{x}\b", t) \
        or re.search(rf"\b{x}{verb}(?:not identified|not seen|absent|negative|none|not present)\b", t)
    pos = re.search(rf"\b{x}{verb}(?:present|identified|seen)\b", t) \
        or re.search(rf"\b(?:positive for|with|shows?|showing|focal|extensive)\s+(?:[a-z\-]+\s+){{0,2}}?{x}\b", t)
    return bool(neg) and not pos


def bootstrap(a: np.ndarray, b: np.ndarray, labels: np.ndarray | None, draws: int = 2000, seed: int = 0):
    """95 % CI of mean(a) − mean(b) (macro over labels when given), queries resampled."""
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(draws):
        i = rng.integers(0, len(a), len(a))
        if labels is None:
            diffs.append(a[i].mean() - b[i].mean())
        else:
            diffs.append(macro(a[i], labels[i]) - macro(b[i], labels[i]))
    return [round(float(np.percentile(diffs, 2.5)), 3), round(float(np.percentile(diffs, 97.5)), 3)]


def collect(methods: Methods, texts: list[str]) -> list[dict]:
    """Per query: the parsed query, the report source's views and fused scores, and the baselines' scores."""
    out = []
    for text in texts:
        q, s = methods.views(text)
        out.append({"q": q, "lexical": s.lexical, "dense": s.dense, "fused": s.fused, "contradicts": s.contradicts,
                    **methods.baselines(text, q)})
    return out


def refuse(item: dict, w: float, pool: int) -> np.ndarray:
    """The report source's fused score of one collected query with other fusion settings."""
    from retrieval.query.report_source import CONTRADICTS, combine

    return combine(item["lexical"], item["dense"], w, pool) + CONTRADICTS * item["contradicts"]


def evaluate(methods: Methods, rows: list[dict], fused=None) -> dict:
    """Every metric of every method on one corpus; ``fused(item) → scores`` overrides the report source's."""
    labels = np.asarray([r["cancer_type"] for r in rows])
    names = ["slidesearch (fused)", "BM25 whole report", "MiniLM whole report", "random"]
    pick = {n: (lambda it, n=n: (fused(it) if fused else it["fused"]) if n == names[0] else it[n]) for n in names}
    reports = collect(methods, [r["report"] for r in rows])
    shorts = [(kind, text) for kind, texts in SHORT.items() if kind in set(labels) for text in texts]
    short_items = collect(methods, [t for _, t in shorts])
    probe_items = collect(methods, [f"{x} present" for x in PROBES])
    negated = {x: np.asarray([negated_only(r["report"], x) for r in rows]) for x in PROBES}
    out: dict = {"queries": {"reports": len(rows), "short": len(shorts), "probes": len(PROBES)}, "methods": {},
                 "per_query": {}}
    for name in names:
        ranks = [ranking(pick[name](it), exclude=i) for i, it in enumerate(reports)]
        m = report_metrics(labels, ranks)
        p10 = np.asarray([(labels[ranking(pick[name](it))[:10]] == kind).mean() for (kind, _), it in zip(shorts, short_items)])
        neg = np.asarray([negated[x][ranking(pick[name](it))[:10]].mean() for x, it in zip(PROBES, probe_items)])
        self_first = np.asarray([ranking(pick[name](it))[0] == i for i, it in enumerate(reports)])
        out["methods"][name] = {"mMV@5": round(macro(m["mv@5"], labels), 3), "Acc@1": round(float(m["acc@1"].mean()), 3),
                                "P@10 short": round(float(p10.mean()), 3), "negated in 'X present' top-10": round(float(neg.mean()), 3),
                                "self ranked first": f"{int(self_first.sum())}/{len(rows)}"}
        out["per_query"][name] = {"mv@5": m["mv@5"], "acc@1": m["acc@1"], "p@10": p10}
    out["probe_support"] = {x: int(v.sum()) for x, v in negated.items()}
    contradicted = [int(it["contradicts"].sum()) for it in reports]
    out["report-length queries: reports flagged as contradicting"] = max(contradicted)
    fused_name = names[0]
    out["bootstrap 95% CI, fused - baseline"] = {
        base: {"mMV@5": bootstrap(out["per_query"][fused_name]["mv@5"], out["per_query"][base]["mv@5"], labels),
               "Acc@1": bootstrap(out["per_query"][fused_name]["acc@1"], out["per_query"][base]["acc@1"], None),
               "P@10 short": bootstrap(out["per_query"][fused_name]["p@10"], out["per_query"][base]["p@10"], None)}
        for base in names[1:3]}
    out["collected"] = (reports, short_items, probe_items, labels, shorts, negated)
    return out


def tune(methods: Methods, rows: list[dict]) -> dict:
    """Grid search of (W_LONG, W_SHORT, POOL) on a corpus: report queries pick W_LONG (Acc@1 + mMV@5), short
    queries W_SHORT (P@10, with the negation probe ≤ 0.05), the pool the best sum."""
    result = evaluate(methods, rows)
    reports, short_items, probe_items, labels, shorts, negated = result["collected"]
    best = None
    for pool in GRID_POOL:
        long_scores = {}
        for w in GRID_W:
            ranks = [ranking(refuse(it, w, pool), exclude=i) for i, it in enumerate(reports)]
            m = report_metrics(labels, ranks)
            long_scores[w] = macro(m["mv@5"], labels) + float(m["acc@1"].mean())
        short_scores = {}
        for w in GRID_W:
            p10 = np.mean([(labels[ranking(refuse(it, w, pool))[:10]] == k).mean() for (k, _), it in zip(shorts, short_items)])
            neg = np.mean([negated[x][ranking(refuse(it, w, pool))[:10]].mean() for x, it in zip(PROBES, probe_items)])
            short_scores[w] = float(p10) if neg <= 0.05 else -1.0
        wl = max(long_scores, key=long_scores.get)
        ws = max(short_scores, key=short_scores.get)
        total = long_scores[wl] + short_scores[ws]
        if best is None or total > best["objective"] + 1e-9:
            best = {"POOL": pool, "W_LONG": wl, "W_SHORT": ws, "objective": round(total, 4),
                    "acc@1+mMV@5": round(long_scores[wl], 4), "P@10 short": round(short_scores[ws], 4)}
    return best


def tiled(reports, size: int, folder: Path, seed: int = 0):
    """A report folder of ``size`` reports: the corpus's reports repeated under new slide ids, vectors jittered."""
    import pyarrow as pa

    from indexer.reports.store import ATTRIBUTE_SCHEMA, REPORT_SCHEMA, write_reports
    from retrieval.query.report_search import ReportIndex

    files, rng = reports.files, np.random.default_rng(seed)
    base_reports = files.reports
    first = base_reports.column("first_sentence").to_numpy()
    count = base_reports.column("sentences").to_numpy()
    source = np.arange(size) % base_reports.num_rows
    take = np.concatenate([np.arange(first[r], first[r] + count[r]) for r in source])
    slide_ids = np.asarray([f"T{i:07d}" for i in range(size)], object)
    sentences = files.sentences.take(pa.array(take))
    sentences = sentences.set_column(0, "sentence_row", pa.array(np.arange(len(take)), pa.int64()))
    sentences = sentences.set_column(1, "slide_id", pa.array(np.repeat(slide_ids, count[source]).tolist(), pa.string()))
    starts = np.concatenate([[0], np.cumsum(count[source])[:-1]])
    table = pa.table({"report_row": np.arange(size), "slide_id": slide_ids.tolist(),
                      "report_sha256": [str(r) for r in source], "first_sentence": starts,
                      "sentences": count[source].astype(np.int32)}, schema=REPORT_SCHEMA)
    vectors = np.asarray(files.vectors, np.float32)[source] + rng.normal(0, 0.02, (size, files.vectors.shape[1]))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tokens = files.sentences.column("tokens").to_pylist()
    words = [[w for t in tokens[first[r]:first[r] + count[r]] for w in t.split()] for r in range(base_reports.num_rows)]
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    model = reports.source.model
    write_reports(folder, (sentences, table, ATTRIBUTE_SCHEMA.empty_table(), vectors.astype(np.float32),
                           [words[r] for r in source]), model, np.zeros((0, model.dim)), {})
    return ReportIndex.from_folder(folder)


def time_queries(reports, queries: list[str], k: int = 10) -> list[float]:
    """Seconds of the report path of ``search_text(source="report")`` per query (after one warm-up query)."""
    from retrieval.query.report_search import REPORT_DEPTH, ReportEvidence

    live = {s: i for i, s in enumerate(reports.source.report_slide.tolist())}
    out = []
    for i, text in enumerate([queries[0], *queries]):
        t0 = time.perf_counter()
        evidence = ReportEvidence(reports, text, live, None)
        score = evidence.slide_scores(max(k, REPORT_DEPTH))
        order = sorted(score, key=lambda r: (-round(score[r], 9), r))[:k]
        [evidence.explain(row, {}) for row in order]
        if i:
            out.append(time.perf_counter() - t0)
    return out


def speed(reports, rows: list[dict], sizes: list[int], out: Path) -> dict:
    short = [t for texts in SHORT.values() for t in texts][:12] + [f"{x} present" for x in PROBES]
    long = [r["report"] for r in rows[:: max(1, len(rows) // 20)]][:20]
    result = {}
    for size in sizes:
        t0 = time.perf_counter()
        big = tiled(reports, size, out / f"tiled-{size}")
        big.source.ready()
        built = time.perf_counter() - t0
        row = {"build+open s": round(built, 1)}
        for name, queries in (("short", short), ("report-length", long)):
            t = np.asarray(time_queries(big, queries)) * 1000
            row[name] = {"p50 ms": round(float(np.percentile(t, 50)), 1), "p99 ms": round(float(np.percentile(t, 99)), 1),
                         "queries": len(t)}
        result[str(size)] = row
        print(f"speed {size}: {row}", file=sys.stderr)
        shutil.rmtree(out / f"tiled-{size}", ignore_errors=True)
    return result


FIRST_QUERY = """
import sys, time
t0 = time.perf_counter()
from retrieval.search import SlideSearcher
s = SlideSearcher(sys.argv[1])
t1 = time.perf_counter()
r = s.search_text("clear cell renal cell carcinoma", k=10, source="report")
t2 = time.perf_counter()
assert r.hits and r.hits[0].report
print(f"{t1 - t0:.3f} {t2 - t1:.3f} {t2 - t0:.3f}")
"""


def first_query(rows: list[dict], out: Path, runs: int = 3) -> dict:
    """A fresh process opens a 24-slide index (``--model tiny``) with real reports and runs its first report query."""
    from indexer.ingestion.config import IndexConfig
    from indexer.ingestion.run import run_index
    from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide
    from indexer.tiles.tiling import TilingConfig

    folder = out / "first"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "slides").mkdir(parents=True)
    picked = rows[:: max(1, len(rows) // 24)][:24]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["slide_id", "report"])
    for i, r in enumerate(picked):
        write_slide(folder / "slides" / f"{r['slide_id']}.tiff",
                    SyntheticSlideSpec(512, 512, (Region(0, 0, 512, 512, "tumour"),), seed=i))
        writer.writerow([r["slide_id"], r["report"]])
    (folder / "meta.csv").write_text(buffer.getvalue())
    config = IndexConfig(model="tiny", tiling=TilingConfig(magnification=10, patch_px=64), num_workers=0)
    run_index([folder / "slides"], folder / "idx", config, metadata_csv=folder / "meta.csv", show_progress=False,
              reports="report")
    times = []
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", FIRST_QUERY, str(folder / "idx")], capture_output=True, text=True,
                              cwd=ROOT, check=True)
        times.append([float(x) for x in done.stdout.split()])
    t = np.median(np.asarray(times), axis=0)
    return {"open s": round(float(t[0]), 2), "first query s": round(float(t[1]), 2), "open + first query s": round(float(t[2]), 2),
            "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/reports-real"))
    parser.add_argument("--tune", action="store_true", help="grid-search the fusion on the tune half first")
    parser.add_argument("--speed", action="store_true", help="time the report path at --sizes reports")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--first-query", action="store_true", help="time a fresh process's first report query")
    parser.add_argument("--no-quality", action="store_true", help="skip the held-out quality figures")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--results", type=Path, default=None,
                        help="folder for bench_reports_real.json and .md (the RESULTS.md section)")
    args = parser.parse_args()
    from benchmarks.common import provenance
    from indexer.reports.model import native_bf16

    rows = load(args.csv)
    tune_rows, held_rows = split(rows, args.seed)
    data = args.csv.relative_to(ROOT) if args.csv.is_relative_to(ROOT) else args.csv
    result: dict = {**provenance("benchmarks/reports_real.py"), "native_bf16": native_bf16(), "data": str(data),
                    "reports": {"tune": len(tune_rows), "held-out": len(held_rows)},
                    "types": len({r["cancer_type"] for r in rows})}
    if args.tune:
        tuned, _, _ = build(tune_rows, args.out / "tune")
        result["tuned on the tune half"] = tune(Methods(tuned, tune_rows, args.seed), tune_rows)
        print(f"tuned: {result['tuned on the tune half']}", file=sys.stderr)
    held, seconds, load_s = build(held_rows, args.out / "held")
    result["indexing"] = {"reports": len(held_rows), "total s": round(seconds, 2), "model load s": load_s,
                          "ms/report": round(1000 * seconds / len(held_rows), 1),
                          "ms/report without model load": round(1000 * (seconds - load_s) / len(held_rows), 1)}
    from retrieval.query import report_source

    result["fusion"] = {"W_SHORT": report_source.W_SHORT, "W_LONG": report_source.W_LONG, "POOL": report_source.POOL,
                        "SHORT_WORDS": report_source.SHORT_WORDS}
    if not args.no_quality:
        quality = evaluate(Methods(held, held_rows, args.seed), held_rows)
        quality.pop("collected")
        quality.pop("per_query")
        result["held-out"] = quality
    if args.speed:
        result["speed"] = speed(held, held_rows, [int(s) for s in args.sizes.split(",")], args.out)
    if args.first_query:
        result["first query"] = first_query(held_rows, args.out)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.results:
        from benchmarks.common import write_outputs

        write_outputs(args.results, "reports_real", result, markdown(result))


def markdown(result: dict) -> str:
    """The RESULTS.md section: held-out quality against the baselines, speed by collection size, first query,
    indexing cost."""
    lines = [f"Command: `{result['command']}`  ", f"Commit `{result['commit']}`; machine: {result['machine']}; native bfloat16: "
             f"{'yes' if result['native_bf16'] else 'no'}.", "",
             f"Data: `{result['data']}`: {sum(result['reports'].values())} real TCGA pathology reports over "
             f"{result['types']} tumour types, split by type into a tune half ({result['reports']['tune']}) and a "
             f"held-out half ({result['reports']['held-out']}); fusion constants {result['fusion']}.", ""]
    held = result.get("held-out")
    if held:
        q = held["queries"]
        lines += [f"Held-out quality ({q['reports']} report-length queries, each excluding itself; {q['short']} short "
                  f"queries; {q['probes']} 'X present' negation probes):", "",
                  "| method | mMV@5 | Acc@1 | P@10 short | negated in 'X present' top-10 | self ranked first |",
                  "|---|---|---|---|---|---|"]
        negated = "negated in 'X present' top-10"
        for name, m in held["methods"].items():
            lines.append(f"| {name} | {m['mMV@5']:.3f} | {m['Acc@1']:.3f} | {m['P@10 short']:.3f} "
                         f"| {m[negated]:.3f} | {m['self ranked first']} |")
        ci = held["bootstrap 95% CI, fused - baseline"]
        lines += ["", "Bootstrap 95% CI of fused − baseline: " + "; ".join(
            f"{base}: " + ", ".join(f"{k} [{lo:+.3f}, {hi:+.3f}]" for k, (lo, hi) in v.items()) for base, v in ci.items()), ""]
    speed = result.get("speed")
    if speed:
        lines += ["Report-backed text query (report source alone, k 10; reports tiled from the held-out half):", "",
                  "| reports | short p50 / p99 ms | report-length p50 / p99 ms | build + open s |", "|---|---|---|---|"]
        for n, v in speed.items():
            lines.append(f"| {int(n):,} | {v['short']['p50 ms']} / {v['short']['p99 ms']} "
                         f"| {v['report-length']['p50 ms']} / {v['report-length']['p99 ms']} | {v['build+open s']} |")
        lines.append("")
    first = result.get("first query")
    if first:
        lines += [f"First query in a fresh process: open {first['open s']} s + first query {first['first query s']} s "
                  f"= **{first['open + first query s']} s** (median of {first['runs']}).", ""]
    i = result["indexing"]
    lines += [f"Indexing {i['reports']} reports: {i['ms/report']} ms a report ({i['ms/report without model load']} "
              f"without the model load of {i['model load s']} s).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
