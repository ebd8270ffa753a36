"""Report + image text search on a synthetic cohort whose reports are written from its planted tissue.

Run: python -m benchmarks.reports [--slides 60] [--seed 0] [--work /tmp/reports-bench] [--out DIR]

Each slide has a major (3/4) and a minor (1/4) tissue class; the image side is the planted encoder of
``tests/planted.py`` (image and text towers aligned on the six class names, so image evidence is known to
be right for the bank's wording and blind to other wording). The text side is the real all-MiniLM-L6-v2.
A report states the present classes (half in the bank's wording, half in held-out paraphrases the bank
does not have), negates two absent classes (sometimes by paraphrase), makes one absent class uncertain for
some slides; a fifth of the slides have no report. The paraphrases and the negation and uncertainty phrasings
are written apart from the banks and from the NegEx trigger lists (tests/test_bench_reports.py checks it), so
the benchmark measures how both generalise rather than the lists it was written from. Queries: each class by its bank name and by a held-out
paraphrase; relevant = slides where the class is present. Reported: Recall@10, Recall@20 (share of the
relevant slides in the top k) and mAP (AP over the full ranking) for image only, report only and hybrid;
the negation set: for each class query, the share of (report negates X, report affirms X) slide pairs
ranked negated-first, for each source and for ungated BM25/dense sentence ranking (no negation handling).
Also the cost of a metadata commit that changes one report against the first build.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

BANK_WORDING = {"tumour": "tumour", "stroma": "stroma", "lymphocytes": "lymphocytes", "necrosis": "necrosis",
                "adipose": "adipose", "mucin": "mucin"}
# Written apart from the banks (indexer/aggregation/banks/*.yaml, the planted bank) and from the NegEx trigger lists
# (indexer/reports/negation.py): tests/test_bench_reports.py fails if a paraphrase holds a bank term or shares a
# content-word pair with any bank text, or if a negation/uncertainty phrasing is a trigger list's entry.
HELD_OUT = {  # in reports only: never a bank text, a class name or a query
    "tumour": ["infiltrating neoplastic glands", "a malignant neoplasm"],
    "stroma": ["bands of fibroblastic tissue", "spindle-cell scar tissue"],
    "lymphocytes": ["a chronic immune cell infiltrate", "clusters of B and T cells"],
    "necrosis": ["zones of cell death", "ghost outlines of dead cells"],
    "adipose": ["clear-vacuolated fatty lobules", "mature lipocytes"],
    "mucin": ["lakes of gelatinous secretion", "mucoid extracellular pools"],
}
QUERY_PARAPHRASE = {"tumour": "cancer cells", "stroma": "scar-like fibrosis", "lymphocytes": "immune cells",
                    "necrosis": "dead tissue", "adipose": "lipid-rich tissue", "mucin": "gel-like secretions"}
AFFIRM = ["{} is present.", "The specimen shows {}.", "Areas of {} are seen."]
NEGATE = ["Sections show no {}.", "We did not see any {}.", "{} is not appreciated.", "The sections are free from {}.",
          "{} is not demonstrated."]
UNSURE = ["A focus worrisome for {} is noted.", "{} remains a possibility.", "Features raise the possibility of {}."]
SIDE = 1024


def cohort(out: Path, n: int, seed: int) -> tuple[list[dict], Path]:
    """Write ``n`` slides, their metadata CSV and report folder; returns the slide facts and the CSV."""
    from benchmarks.fixtures.planted import CLASSES
    from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide

    rng = np.random.default_rng(seed)
    (out / "slides").mkdir(parents=True, exist_ok=True)
    (out / "reports").mkdir(exist_ok=True)
    facts, lines = [], ["slide_id,organ"]
    for i in range(n):
        major, minor = (str(c) for c in rng.choice(CLASSES, 2, replace=False))
        slide_id = f"R{i:04d}"
        regions = (Region(0, 0, SIDE, SIDE * 3 // 4, major), Region(0, SIDE * 3 // 4, SIDE, SIDE, minor))
        write_slide(out / "slides" / f"{slide_id}.tiff", SyntheticSlideSpec(SIDE, SIDE, regions, seed=i))
        absent = [c for c in CLASSES if c not in (major, minor)]
        negated = [str(c) for c in rng.choice(absent, 2, replace=False)]
        unsure = [c for c in absent if c not in negated][:1] if rng.random() < 0.3 else []
        fact = {"slide_id": slide_id, "present": {major, minor}, "negated": set(), "affirmed": set()}
        if rng.random() >= 0.2:
            sentences = []
            for c in (major, minor):
                sentences.append(_say(rng, AFFIRM, c))
                fact["affirmed"].add(c)
            for c in negated:
                sentences.append(_say(rng, NEGATE, c))
                fact["negated"].add(c)
            sentences += [_say(rng, UNSURE, c) for c in unsure]
            order = rng.permutation(len(sentences))
            (out / "reports" / f"{slide_id}.txt").write_text(" ".join(sentences[j] for j in order))
        facts.append(fact)
        lines.append(f"{slide_id},colon")
    csv = out / "metadata.csv"
    csv.write_text("\n".join(lines) + "\n")
    return facts, csv


def _say(rng, templates: list[str], cls: str) -> str:
    words = BANK_WORDING[cls] if rng.random() < 0.5 else str(rng.choice(HELD_OUT[cls]))
    text = str(rng.choice(templates)).format(words)
    return text[0].upper() + text[1:]


def evaluate(searcher, facts: list[dict]) -> dict:
    """Recall@10/20 and mAP per source, and the negation pair rates."""
    n = len(facts)
    by_id = {f["slide_id"]: f for f in facts}
    queries = [(c, c, "bank") for c in BANK_WORDING] + [(QUERY_PARAPHRASE[c], c, "paraphrase") for c in BANK_WORDING]
    out: dict = {"quality": {}, "negation": {}}
    for source in ("image", "report", "both"):
        rows = {"bank": [], "paraphrase": []}
        neg_pairs = [0, 0]
        for text, cls, kind in queries:
            ranked = searcher.search_text(text, k=n, source=source).slide_ids
            ranked += [s for s in by_id if s not in ranked]  # unranked slides come last (report-only lists)
            rows[kind].append(_quality(ranked, {s for s, f in by_id.items() if cls in f["present"]}))
            if kind == "bank":
                _count_pairs(ranked, facts, cls, neg_pairs)
        out["quality"][source] = {kind: {m: round(float(np.mean([r[m] for r in v])), 4) for m in v[0]}
                                  for kind, v in rows.items()}
        out["negation"][source] = {"pairs": neg_pairs[1], "negated_first": round(neg_pairs[0] / max(1, neg_pairs[1]), 4)}
    for name in ("lexical", "dense"):
        neg_pairs = [0, 0]
        for cls in BANK_WORDING:
            _count_pairs(_ungated(searcher.report_index, cls, name, facts), facts, cls, neg_pairs)
        out["negation"][f"ungated {name}"] = {"pairs": neg_pairs[1],
                                              "negated_first": round(neg_pairs[0] / max(1, neg_pairs[1]), 4)}
    return out


def _quality(ranked: list[str], relevant: set[str]) -> dict:
    hits = np.asarray([s in relevant for s in ranked], bool)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return {"recall@10": hits[:10].sum() / len(relevant), "recall@20": hits[:20].sum() / len(relevant),
            "mAP": float((precision * hits).sum() / len(relevant))}


def _count_pairs(ranked: list[str], facts: list[dict], cls: str, acc: list[int]) -> None:
    position = {s: i for i, s in enumerate(ranked)}
    negs = [f["slide_id"] for f in facts if cls in f["negated"]]
    poss = [f["slide_id"] for f in facts if cls in f["affirmed"]]
    for a in negs:
        for b in poss:
            acc[0] += position[a] < position[b]
            acc[1] += 1


def _ungated(reports, query: str, name: str, facts: list[dict]) -> list[str]:
    """Slides by one report view alone without any negation handling (the baseline)."""
    ranked = reports.plain_ranking(query, name)
    return ranked + [f["slide_id"] for f in facts if f["slide_id"] not in ranked]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/reports-bench"), help="cohort and index (replaced)")
    parser.add_argument("--out", type=Path, default=None, help="write bench_reports.json, .md and .png here")
    args = parser.parse_args(argv)
    from benchmarks.common import provenance, write_outputs

    facts = provenance("benchmarks/reports.py", argv)
    from benchmarks.fixtures import planted
    from indexer.ingestion.run import IndexConfig, run_index
    from indexer.reports.commit import commit_metadata, report_source
    from indexer.store.writer import IndexWriter
    from indexer.tiles.tiling import TilingConfig
    from benchmarks.common import machine_description
    from retrieval.search import SlideSearcher

    shutil.rmtree(args.work, ignore_errors=True)
    truth, csv = cohort(args.work, args.slides, args.seed)
    bank = planted.write_planted_bank(args.work / "bank.yaml")
    config = IndexConfig(model="planted", bank=str(bank), tiling=TilingConfig(magnification=10, patch_px=64),
                         num_workers=0)
    index = args.work / "idx"
    run_index([args.work / "slides"], index, config, metadata_csv=csv, show_progress=False)
    t0 = time.perf_counter()
    table, rconfig = report_source(str(args.work / "reports"), None)
    with IndexWriter(index) as writer:
        commit_metadata(writer, None, table, rconfig)
    first = time.perf_counter() - t0
    changed = next(p for p in sorted((args.work / "reports").glob("*.txt")))
    changed.write_text(changed.read_text() + " Margins are clear.")
    t0 = time.perf_counter()
    table, rconfig = report_source(str(args.work / "reports"), None)
    with IndexWriter(index) as writer:
        version = commit_metadata(writer, None, table, rconfig)
    one = time.perf_counter() - t0
    info = json.loads((index / version.reports / "reports.json").read_text())
    result = {"provenance": facts, "machine": machine_description(), "slides": args.slides, "reports": info["slides"],
              "sentences": info["sentences"], "seed": args.seed,
              "commit_s": {"first build": round(first, 2), "one report changed": round(one, 2),
                           "encoded_slides_after_change": info["encoded_slides"]},
              **evaluate(SlideSearcher(index), truth)}
    write_outputs(args.out, "reports", result, markdown(result))
    if args.out:
        _plot(result, args.out / "bench_reports.png")
    return result


def markdown(result: dict) -> str:
    """Quality per source and wording, the negation pair rates, and the report commit costs."""
    from benchmarks.common import header

    names = {"image": "image only", "report": "report only", "both": "hybrid (RRF)"}
    lines = [header(result["provenance"]), "",
             f"{result['slides']} synthetic slides, {result['reports']} with a report ({result['sentences']} "
             f"sentences), seed {result['seed']}; image side: the planted encoder (aligned on the six class names); "
             "text side: all-MiniLM-L6-v2. Relevant = slides where the class is present.", "",
             "| source | query wording | Recall@10 | Recall@20 | mAP |", "|---|---|---|---|---|"]
    for source, kinds in result["quality"].items():
        for kind, m in kinds.items():
            wording = "bank name" if kind == "bank" else "held-out paraphrase"
            lines.append(f"| {names[source]} | {wording} | {m['recall@10']:.3f} | {m['recall@20']:.3f} | "
                         f"{m['mAP']:.3f} |")
    lines += ["", "Negation: for each bank-name query X, every (slide whose report negates X, slide whose report "
              "affirms X) pair; the share ranked negated-first (lower is better; the phrasings are not trigger-list "
              "entries).", "", "| ranking | pairs | \"no X\" above X |", "|---|---|---|"]
    for name, n in result["negation"].items():
        lines.append(f"| {names.get(name, name)} | {n['pairs']:,} | {n['negated_first']:.3f} |")
    c = result["commit_s"]
    lines += ["", f"Report commits: first build {c['first build']:.2f} s; one report changed {c['one report changed']:.2f} "
              f"s (slides re-encoded: {c['encoded_slides_after_change']})."]
    return "\n".join(lines) + "\n"


def _plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    sources = ["image", "report", "both"]
    for offset, kind in enumerate(("bank", "paraphrase")):
        axes[0].bar(np.arange(3) + offset * 0.38, [result["quality"][s][kind]["mAP"] for s in sources], 0.36,
                    label=f"{kind} wording")
    axes[0].set_xticks(np.arange(3) + 0.19, sources)
    axes[0].set_ylabel("mAP")
    axes[0].set_ylim(0, 1.25)
    axes[0].legend(loc="upper center", ncol=2)
    names = list(result["negation"])
    axes[1].bar(names, [result["negation"][n]["negated_first"] for n in names], color="tab:red")
    axes[1].set_ylabel('"no X" ranked above X (share of pairs)')
    axes[1].tick_params(axis="x", rotation=25)
    fig.suptitle(f"reports benchmark: {result['slides']} slides, {result['reports']} reports")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
