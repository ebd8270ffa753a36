"""Case-level and cross-stain retrieval benchmark (`bench retrieval --level case`), with reports.

Protocol.
- **Case level, leave one patient out.** Every case with a label is a query (all its slides, every stain);
  it searches the other cases, minus every case with a slide sharing a query slide's ``exclude_same`` value.
  The ranked cases' labels give mMV@k, mAP@k and Acc@k (:mod:`retrieval.evaluation.metrics`, convention stated), for each
  slide space × fusion (``concat``, ``mean``, ``max``), beside two baselines: **H&E only** (query and
  candidates are the cases' H&E slides alone, ``mean`` fusion) and **random** (seeded random case rankings).
- **Cross-stain Recall@k.** Every IHC slide of a case that also has an H&E slide is a query over all H&E
  slides (``--target-stain H&E``); a hit is the query's own case. Recall@k per space, beside random.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from indexer.errors import QueryError
from retrieval.evaluation.bench_retrieval import convention_line, write_report
from retrieval.query.cases import FUSIONS, CaseSearcher
from retrieval.evaluation.metrics import DEFAULT_CONVENTION, check_convention, recall_at_k, retrieval_report
from retrieval.search import SlideSearcher

RANDOM_REPEATS = 100
REFERENCE, QUERY_STAIN = "H&E", "IHC"


def run_case_benchmark(index: str | Path, label: str, ks: Sequence[int] = (1, 5, 10),
                       exclude_same: str | None = "patient_id", fusions: Sequence[str] = FUSIONS,
                       spaces: Sequence[str] | None = None, convention: str = DEFAULT_CONVENTION, seed: int = 0,
                       on_query: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Case-level leave-one-patient-out retrieval and cross-stain Recall@k (module docstring).

    Returns:
        A JSON-able dict: settings, counts, ``results`` (``"<space>/<fusion>"`` → metrics, per_class, seconds),
        ``baselines`` (``he_only``, ``random``), ``cross_stain`` (space → Recall@k, and ``random``).
    """
    from retrieval.query.spaces import space_names

    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise QueryError(f"k values must be at least 1, got {list(ks)}")
    check_convention(convention)
    bad = [f for f in fusions if f not in FUSIONS]
    if bad or not fusions:
        raise QueryError(f"unknown fusion {bad[0] if bad else ''!r}: use {', '.join(FUSIONS)}")
    searcher = CaseSearcher(SlideSearcher(index))
    t = searcher.table
    known = space_names(searcher.searcher.catalog)
    spaces = list(spaces or known)
    if any(s not in known for s in spaces):
        raise QueryError(f"unknown space {next(s for s in spaces if s not in known)!r}: this index has {', '.join(known)}")
    if label not in searcher.searcher.catalog.slides.column_names:
        raise QueryError(f"--label {label!r}: no such column")
    case_label = _case_labels(t, label)
    queries = sorted(case_label)
    if len(set(case_label.values())) < 2:
        raise QueryError(f"--label {label!r}: fewer than 2 classes among labelled cases")
    k_max = max(ks)
    ranked: dict[str, list[list[str]]] = {}
    seconds: dict[str, float] = {}
    for space in spaces:
        for fusion in fusions:
            name = f"{space}/{fusion}"
            start = time.perf_counter()
            ranked[name] = [_ranked_cases(searcher, q, k_max, exclude_same, fusion, space, case_label) for q in queries]
            seconds[name] = round(time.perf_counter() - start, 3)
            if on_query:
                on_query(name)
    he_queries = [q for q in queries if REFERENCE in _stains_of(t, q)]
    he_only = [_ranked_cases(searcher, q, k_max, exclude_same, "mean", "proto", case_label, REFERENCE) for q in he_queries]
    rng = np.random.default_rng(seed)
    n_relevant, random_ranked = [], [[] for _ in range(RANDOM_REPEATS)]
    for q in queries:
        allowed = _allowed_cases(searcher, q, exclude_same, case_label)
        n_relevant.append(sum(case_label[c] == case_label[q] for c in allowed))
        for rep in random_ranked:
            rep.append(list(rng.permutation(allowed)[:k_max]) if allowed else [])
    labels = [case_label[q] for q in queries]

    def report(lists, query_labels, relevant):
        return retrieval_report([[case_label[c] for c in r] for r in lists], query_labels, ks, relevant, convention)

    results = {name: {**_strip(report(lists, labels, n_relevant)), "seconds": seconds[name]} for name, lists in ranked.items()}
    he_relevant = [n for q, n in zip(queries, n_relevant) if q in set(he_queries)]
    randoms = [report(r, labels, n_relevant)["metrics"] for r in random_ranked]
    baselines = {
        "he_only": {**_strip(report(he_only, [case_label[q] for q in he_queries], he_relevant)), "n_queries": len(he_queries)},
        "random": {"repeats": RANDOM_REPEATS, "seed": seed,
                   "metrics": {m: float(np.mean([r[m] for r in randoms])) for m in randoms[0]}},
    }
    return {
        "index": str(Path(index)), "level": "case", "label": label, "exclude_same": exclude_same, "ks": list(ks),
        "convention": convention, "spaces": spaces, "fusions": list(fusions),
        "n_cases": len(t["case_ids"]), "n_queries": len(queries), "n_slides": len(t["rows"]),
        "stains": {s: t["stain"].count(s) for s in t["stains"]},
        "classes": {c: labels.count(c) for c in sorted(set(labels), key=str)},
        "results": results, "baselines": baselines,
        "cross_stain": _cross_stain(searcher, spaces, ks, rng),
    }


def _case_labels(t: dict, label: str) -> dict[str, Any]:
    """case_id → the label of its first labelled slide (cases without one are not queries)."""
    out: dict[str, Any] = {}
    for s, c in zip(t["slides"], t["case"]):
        value = s.get(label)
        if value is not None and str(value).strip() and t["case_ids"][c] not in out:
            out[t["case_ids"][c]] = value
    return out


def _stains_of(t: dict, case_id: str) -> set[str]:
    c = t["case_of"][case_id]
    return {s for s, i in zip(t["stain"], t["case"]) if i == c}


def _ranked_cases(searcher: CaseSearcher, query: str, k: int, exclude_same, fusion, space, case_label,
                  stain: str | None = None) -> list[str]:
    result = searcher.search(query, k=k * 4, exclude_same=exclude_same, fusion=fusion, space=space,
                             target_stain=stain, query_stain=stain)
    return [c for c in result.case_ids if c in case_label][:k]  # unlabelled cases are never retrieved


def _allowed_cases(searcher: CaseSearcher, query: str, exclude_same, case_label) -> list[str]:
    t = searcher.table
    q_at, _ = searcher.query_rows(query)
    allowed = searcher.allowed_mask(None, exclude_same, q_at, None)
    return sorted({t["case_ids"][c] for c in t["case"][allowed]} & set(case_label))


def _cross_stain(searcher: CaseSearcher, spaces, ks, rng) -> dict[str, Any]:
    """Recall@k of IHC slide → H&E slides of every space: is the query's own case's H&E slide in the top k?"""
    t = searcher.table
    if REFERENCE not in t["stains"] or QUERY_STAIN not in t["stains"]:
        return {"n_queries": 0, "note": f"needs both {REFERENCE} and {QUERY_STAIN} slides"}
    he_cases = {t["case_ids"][c] for s, c in zip(t["stain"], t["case"]) if s == REFERENCE}
    queries = [(t["slide_ids"][i], t["case_ids"][c]) for i, (s, c) in enumerate(zip(t["stain"], t["case"]))
               if s == QUERY_STAIN and t["case_ids"][c] in he_cases]
    k_max, out = max(ks), {"n_queries": len(queries), "n_reference_cases": len(he_cases), "spaces": {}}
    for space in spaces:
        ranked = []
        for slide_id, _ in queries:
            result = searcher.search(slide_id, k=k_max, fusion="max", space=space, target_stain=REFERENCE,
                                     include_own_case=True)
            ranked.append(result.case_ids)
        out["spaces"][space] = {f"Recall@{k}": recall_at_k(ranked, [c for _, c in queries], k) for k in ks}
    pool = sorted(he_cases)
    rand = [[list(rng.permutation(pool)[:k_max]) for _ in queries] for _ in range(RANDOM_REPEATS)]
    out["random"] = {f"Recall@{k}": float(np.mean([recall_at_k(r, [c for _, c in queries], k) for r in rand])) for k in ks}
    return out


def _strip(report: dict) -> dict:
    return {"metrics": report["metrics"], "per_class": report["per_class"]}


# -- reports -------------------------------------------------------------------------------
def markdown_case_report(result: dict[str, Any]) -> str:
    """Tables: case-level metrics per space/fusion and baselines; cross-stain Recall@k per space."""
    ks = result["ks"]
    names = [f"{m}@{k}" for m in ("mMV", "mAP") for k in ks]
    stains = ", ".join(f"{s}: {n}" for s, n in result["stains"].items())
    lines = [f"Case-level retrieval on `{result['index']}`: label `{result['label']}`, excluding cases with the same "
             f"`{result['exclude_same']}`; {result['n_queries']} query cases of {result['n_cases']} "
             f"({result['n_slides']} slides; {stains}).", "", convention_line(result["convention"]), "",
             "| space / fusion | " + " | ".join(names) + " | seconds |", "|---" * (len(names) + 2) + "|"]
    for name, res in result["results"].items():
        lines.append(f"| {name} | " + " | ".join(f"{res['metrics'].get(n, float('nan')):.3f}" for n in names) + f" | {res['seconds']:.2f} |")
    he, rnd = result["baselines"]["he_only"], result["baselines"]["random"]
    lines.append(f"| H&E only ({he['n_queries']} cases) | " + " | ".join(f"{he['metrics'].get(n, float('nan')):.3f}" for n in names) + " | |")
    lines.append(f"| random ({rnd['repeats']}×) | " + " | ".join(f"{rnd['metrics'].get(n, float('nan')):.3f}" for n in names) + " | |")
    cross = result["cross_stain"]
    lines += ["", f"Cross-stain: {cross['n_queries']} IHC slides query the H&E slides; hit = own case's H&E slide.", ""]
    if cross["n_queries"]:
        cols = [f"Recall@{k}" for k in ks]
        lines += ["| space | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for space, rec in cross["spaces"].items():
            lines.append(f"| {space} | " + " | ".join(f"{rec[c]:.3f}" for c in cols) + " |")
        lines.append("| random | " + " | ".join(f"{cross['random'][c]:.3f}" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def write_case_report(result: dict[str, Any], out: str | Path, command: str = "") -> dict[str, Path]:
    """Write ``bench_cases.json``, ``.md`` and ``.png`` into ``out``."""
    return write_report(result, out, "bench_cases", markdown_case_report, plot_cases, command)


def plot_cases(result: dict[str, Any], path: str | Path) -> Path:
    """Left: case mMV@k and mAP@k per space/fusion and baselines; right: cross-stain Recall@k per space."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = result["ks"]
    k = min(ks, key=lambda v: (abs(v - 5), v))
    rows = {**{n: r["metrics"] for n, r in result["results"].items()},
            "H&E only": result["baselines"]["he_only"]["metrics"], "random": result["baselines"]["random"]["metrics"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.arange(len(rows))
    for i, metric in enumerate((f"mMV@{k}", f"mAP@{k}")):
        left.bar(x + (i - 0.5) * 0.38, [m.get(metric, 0.0) for m in rows.values()], 0.38, label=metric)
    left.set_xticks(x, list(rows), rotation=35, ha="right", fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_title(f"Case level, leave one {result['exclude_same']} out ({result['convention']})", fontsize=10)
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    cross = result["cross_stain"]
    for space, rec in cross.get("spaces", {}).items():
        right.plot(ks, [rec[f"Recall@{v}"] for v in ks], marker="o", label=space)
    if cross.get("n_queries"):
        right.plot(ks, [cross["random"][f"Recall@{v}"] for v in ks], linestyle="--", color="black", label="random")
    right.set_ylim(0, 1.05)
    right.set_xlabel("k")
    right.set_ylabel("Recall@k")
    right.set_title(f"Cross-stain: IHC slide → same case's H&E ({cross.get('n_queries', 0)} queries)", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
