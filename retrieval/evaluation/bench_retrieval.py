"""Leave-one-patient-out retrieval benchmark over a whole index (proto, mean and patch-vote), with reports.

Protocol. Every indexed slide with a value in the ``label`` column is a query; slides without one are
skipped and never retrieved. A query searches the other labelled slides, minus every slide sharing its
``exclude_same`` value (e.g. ``patient_id``: leave one patient out), and the labels of the ranked hits
are scored with :mod:`retrieval.evaluation.metrics` (mMV@k macro over classes; mAP@k and Acc@k over queries).

Modes:

- ``proto``: slide → slide search with the ProAlign slide vectors (``slides.faiss``).
- ``mean``: the same with the mean-pool baseline vectors (``slides_mean.faiss``).
- ``patch-vote``: the query slide's patches (all, or an evenly spaced sample of ``max_query_patches``)
  each fetch their ``patch_neighbours`` nearest patches of the allowed slides (``patches.faiss``); a slide
  scores the sum of the similarities of its patches over all these neighbour lists, and slides are ranked
  by that score (ties by slide_row). Slides no query patch reached are not ranked.

Chance. A retriever whose output does not depend on the query's label (random rankings, or always the
same answer) has expected macro majority-vote accuracy ``1 / C`` for ``C`` query classes, whatever the
class balance: class ``c`` scores P(vote = c), and these sum to 1 over the classes (when every query gets
a hit). That is the chance rate stated here. Leaving patients out removes same-label slides, so random
rankings typically score below it; a seeded random-ranking baseline (mean over ``RANDOM_REPEATS`` random
rankings per query) is reported too.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from indexer import vectors as vi
from indexer.errors import QueryError
from retrieval.evaluation.metrics import DEFAULT_CONVENTION, check_convention, retrieval_report
from retrieval.search import SlideSearcher

MODES = ("proto", "mean", "patch-vote")
SLIDE_INDEX = {"proto": "slides", "mean": "slides_mean"}
MAX_QUERY_PATCHES = 64
PATCH_NEIGHBOURS = 32
RANDOM_REPEATS = 100
RANDOM_QUERY_BUDGET = 200_000  # fewer random repeats on large collections
PLOT_K = 5


def run_retrieval_benchmark(index: str | Path, label: str, ks: Sequence[int] = (1, 5, 10),
                            exclude_same: str | None = "patient_id", modes: Sequence[str] = MODES, *,
                            max_query_patches: int = MAX_QUERY_PATCHES, patch_neighbours: int = PATCH_NEIGHBOURS,
                            seed: int = 0, on_query: Callable[[str], None] | None = None,
                            convention: str = DEFAULT_CONVENTION) -> dict[str, Any]:
    """Leave-one-out retrieval of every labelled slide of an index, in each mode (see the module docstring).

    Args:
        index: the index directory.
        label: the slides column holding the class (e.g. ``label``, ``diagnosis``).
        ks: cut-offs for mMV@k, mAP@k and Acc@k.
        exclude_same: leave out slides sharing this column's value with the query (None: only the query).
        modes: any of ``proto``, ``mean``, ``patch-vote``.
        max_query_patches: patch-vote: at most this many (evenly spaced) patches per query slide.
        patch_neighbours: patch-vote: nearest patches fetched per query patch.
        seed: seed of the random-ranking baseline.
        on_query: called with the query's slide_id after it ran in every mode (progress).
        convention: metric convention, ``slidesearch`` or ``sish`` (see :mod:`retrieval.evaluation.metrics`).

    Returns:
        A JSON-able dict: settings, counts (queries, skipped, classes), ``chance``, ``random`` baseline
        and per mode ``{"metrics", "per_class", "seconds", "hits"}`` (``hits``: query slide_id → ranked
        hit slide_ids, top max(ks)).

    Raises:
        QueryError: unknown column or mode, bad k, or fewer than two labelled classes.
    """
    ks = _check_ks(ks)
    modes = _check_modes(modes)
    check_convention(convention)
    if max_query_patches < 1 or patch_neighbours < 1:
        raise QueryError("max_query_patches and patch_neighbours must be at least 1")
    searcher = SlideSearcher(index)
    catalog, arrays = searcher.catalog, searcher.arrays
    columns = catalog.slides.column_names
    if label not in columns:
        raise QueryError(f"--label {label!r}: no such column (columns: {', '.join(columns)})")
    rows, labels, skipped = _labelled_slides(catalog.slides, label)
    if len(set(labels)) < 2:
        raise QueryError(f"--label {label!r}: {len(set(labels))} class(es) among {len(rows)} labelled slides; need at least 2")
    label_of = dict(zip(rows.tolist(), labels))

    def slide_id(row) -> str:
        return arrays.metadata[int(row)]["slide_id"]

    for name in [SLIDE_INDEX[m] for m in modes if m in SLIDE_INDEX] + (["patches"] if "patch-vote" in modes else []):
        catalog.faiss(name)  # load before timing
    k_max = max(ks)
    repeats = max(1, min(RANDOM_REPEATS, RANDOM_QUERY_BUDGET // len(rows)))
    rng = np.random.default_rng(seed)
    ranked: dict[str, list[list[int]]] = {mode: [] for mode in modes}
    random_ranked: list[list[list[int]]] = [[] for _ in range(repeats)]
    seconds = dict.fromkeys(modes, 0.0)
    n_relevant = []
    for row, query_label in zip(rows.tolist(), labels):
        allowed = np.intersect1d(catalog.allowed_slide_rows(None, exclude_row=row, exclude_same=exclude_same), rows)
        n_relevant.append(sum(label_of[int(a)] == query_label for a in allowed))
        for mode in modes:
            start = time.perf_counter()
            if mode == "patch-vote":
                hits = _patch_vote(searcher, row, allowed, k_max, max_query_patches, patch_neighbours)
            else:
                hits = _slide_search(searcher, row, allowed, k_max, SLIDE_INDEX[mode])
            ranked[mode].append(hits)
            seconds[mode] += time.perf_counter() - start
        for rep in random_ranked:
            rep.append(rng.choice(allowed, size=min(k_max, len(allowed)), replace=False).tolist())
        if on_query:
            on_query(slide_id(row))
    results = {}
    for mode in modes:
        report = retrieval_report([[label_of[h] for h in hits] for hits in ranked[mode]], labels, ks, n_relevant,
                                  convention)
        results[mode] = {"metrics": report["metrics"], "per_class": report["per_class"], "seconds": round(seconds[mode], 3),
                         "hits": {slide_id(r): [slide_id(h) for h in hits] for r, hits in zip(rows, ranked[mode])}}
    classes = {c: labels.count(c) for c in sorted(set(labels), key=str)}
    random_reports = [retrieval_report([[label_of[h] for h in hits] for hits in rep], labels, ks, n_relevant, convention)
                      for rep in random_ranked]
    return {
        "index": str(Path(index)), "label": label, "exclude_same": exclude_same, "ks": list(ks), "modes": list(modes),
        "convention": convention,
        "n_slides": len(arrays.ids), "n_queries": len(rows), "skipped_unlabelled": skipped, "classes": classes,
        "n_relevant_mean": float(np.mean(n_relevant)),
        "chance": {"mMV": 1.0 / len(classes), "definition": (
            f"1/C with C={len(classes)} query classes: the expected macro majority-vote accuracy of any retriever "
            "whose answer does not depend on the query's label (random rankings included), for any class balance")},
        "random": {"repeats": repeats, "seed": seed, "metrics": {
            name: float(np.mean([r["metrics"][name] for r in random_reports])) for name in random_reports[0]["metrics"]}},
        "patch_vote": {"max_query_patches": max_query_patches, "patch_neighbours": patch_neighbours},
        "results": results,
    }


def _labelled_slides(slides, label: str) -> tuple[np.ndarray, list, int]:
    """slide_rows and labels of indexed slides with a non-empty label, and how many indexed slides had none."""
    ok = [s for s in slides.to_pylist() if s["status"] == "ok"]
    labelled = [s for s in ok if s[label] is not None and str(s[label]).strip() != ""
                and not (isinstance(s[label], float) and np.isnan(s[label]))]
    return np.asarray([s["slide_row"] for s in labelled], np.int64), [s[label] for s in labelled], len(ok) - len(labelled)


def _slide_search(searcher: SlideSearcher, row: int, allowed: np.ndarray, k: int, index_name: str) -> list[int]:
    """Hit slide_rows of one slide → slide query among ``allowed`` (the vectors ``search_slide`` uses)."""
    query = searcher.arrays.slide_vector(searcher.catalog, row, index_name)
    _, ids = vi.search(searcher.catalog.faiss(index_name), query[None], k, allowed)
    return [int(i) for i in ids[0] if i >= 0]


def _patch_vote(searcher: SlideSearcher, row: int, allowed: np.ndarray, k: int, max_patches: int,
                neighbours: int) -> list[int]:
    """Slides ranked by the summed similarity of their patches among the query patches' neighbours."""
    arrays, catalog = searcher.arrays, searcher.catalog
    own = arrays.patch_rows_of(np.array([row]))
    own = own[np.linspace(0, len(own) - 1, min(len(own), max_patches)).astype(np.int64)] if len(own) else own
    if len(own) == 0 or len(allowed) == 0:
        return []
    queries = arrays.slide_vectors(catalog, own, "patches")
    sims, ids = vi.search(catalog.faiss("patches"), queries, neighbours, arrays.patch_rows_of(allowed))
    found = ids >= 0
    slide_of = arrays.patch_slide[ids[found]]
    votes = np.bincount(slide_of, weights=sims[found].astype(np.float64), minlength=len(arrays.mass))
    voted = np.unique(slide_of)
    order = np.lexsort((voted, -np.round(votes[voted], 9)))
    return voted[order][:k].tolist()


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] < 1:
        raise QueryError(f"k values must be at least 1, got {list(ks)}")
    return ks


def _check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise QueryError(f"unknown mode {unknown[0] if unknown else ''!r}: use {', '.join(MODES)}")
    return tuple(dict.fromkeys(modes))


# -- reports -------------------------------------------------------------------------------
def markdown_report(result: dict[str, Any]) -> str:
    """The result as Markdown: protocol line, one row per mode (+ random baseline), chance rate, per class."""
    ks = result["ks"]
    names = [f"{m}@{k}" for m in ("mMV", "mAP", "Acc") for k in ks]
    lines = [
        f"Leave-one-out retrieval on `{result['index']}`: label `{result['label']}`, "
        f"excluding slides with the same `{result['exclude_same']}`" if result["exclude_same"] else
        f"Leave-one-slide-out retrieval on `{result['index']}`: label `{result['label']}`",
        "",
        f"{result['n_queries']} labelled slides as queries ({result['skipped_unlabelled']} skipped: no label), "
        f"{len(result['classes'])} classes ({', '.join(f'{c}: {n}' for c, n in result['classes'].items())}); "
        f"{result['n_relevant_mean']:.1f} same-label slides left per query on average.",
        "",
        convention_line(result.get("convention", DEFAULT_CONVENTION)),
        "",
        "| mode | " + " | ".join(names) + " | seconds |",
        "|---" * (len(names) + 2) + "|",
    ]
    for mode, res in result["results"].items():
        lines.append(f"| {mode} | " + " | ".join(_fmt(res["metrics"].get(n)) for n in names) + f" | {res['seconds']:.2f} |")
    rnd = result["random"]
    lines.append(f"| random ranking ({rnd['repeats']}×) | " + " | ".join(_fmt(rnd["metrics"].get(n)) for n in names) + " | |")
    lines += ["", f"**Chance rate (mMV): {result['chance']['mMV']:.3f}** = {result['chance']['definition']}.",
              f"patch-vote: ≤{result['patch_vote']['max_query_patches']} evenly spaced patches per query slide, "
              f"{result['patch_vote']['patch_neighbours']} nearest patches each; slides ranked by summed similarity.", ""]
    k = _plot_k(ks)
    classes = list(result["classes"])
    lines += [f"Per-class mMV@{k}:", "", "| mode | " + " | ".join(map(str, classes)) + " |", "|---" * (len(classes) + 1) + "|"]
    for mode, res in result["results"].items():
        per = res["per_class"].get(f"mMV@{k}", {})
        lines.append(f"| {mode} | " + " | ".join(_fmt(per.get(c)) for c in classes) + " |")
    return "\n".join(lines) + "\n"


def convention_line(convention: str) -> str:
    """The sentence every report carries about how mMV@k and mAP@k were counted."""
    how = {"slidesearch": "votes over the results present; AP@k divided by min(k, relevant items); mAP over queries",
           "sish": "SISH eval.py: a vote counts only in a full list or with ≥ ⌈k/2⌉ votes; AP@k divided by k; "
                   "mMV and mAP averaged over classes"}[convention]
    return f"Metric convention: `{convention}` ({how})."


def write_retrieval_report(result: dict[str, Any], out: str | Path, command: str = "") -> dict[str, Path]:
    """Write ``bench_retrieval.json``, ``.md`` and ``.png`` (per-class mMV@5 by mode) into ``out``."""
    return write_report(result, out, "bench_retrieval", markdown_report, plot_per_class, command)


def write_report(result: dict[str, Any], out: str | Path, stem: str, markdown: Callable[[dict], str],
                 plot: Callable[[dict, Path], Path], command: str = "") -> dict[str, Path]:
    """Write ``<stem>.json`` (the result and the command), ``.md`` (``markdown(result)``) and, where matplotlib is
    installed, ``.png`` (``plot``)."""
    from indexer.store import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{stem}.{ext}" for ext in ("json", "md", "png")}
    body = result | ({"command": command} if command else {})
    atomic_write_bytes(paths["json"], (json.dumps(body, indent=2, default=str) + "\n").encode())
    text = markdown(result) + (f"\nCommand: `{command}`\n" if command else "")
    atomic_write_bytes(paths["md"], text.encode())
    if importlib.util.find_spec("matplotlib") is None:  # the `bench` extra: the figure is optional
        print("note: no figure: matplotlib is not installed (pip install 'slidesearch[bench]')", file=sys.stderr)
        del paths["png"]
    else:
        plot(result, paths["png"])
    return paths


def plot_per_class(result: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: per-class mMV@5 (or the nearest k computed), one bar per mode, chance rate as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = _plot_k(result["ks"])
    classes = list(result["classes"])
    modes = list(result["results"])
    width = 0.8 / max(1, len(modes))
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(classes) + 2), 4.5))
    for i, mode in enumerate(modes):
        per = result["results"][mode]["per_class"].get(f"mMV@{k}", {})
        overall = result["results"][mode]["metrics"].get(f"mMV@{k}", float("nan"))
        ax.bar(x + (i - (len(modes) - 1) / 2) * width, [per.get(c, 0.0) for c in classes], width,
               label=f"{mode} (mMV@{k} {overall:.2f})")
    ax.axhline(result["chance"]["mMV"], color="black", linestyle="--", linewidth=1,
               label=f"chance 1/C = {result['chance']['mMV']:.2f}")
    ax.set_xticks(x, [f"{c}\n(n={result['classes'][c]})" for c in classes], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel(f"class (column '{result['label']}')")
    ax.set_ylabel(f"majority-vote accuracy @ {k}")
    excluded = f", excluding same {result['exclude_same']}" if result["exclude_same"] else ""
    ax.set_title(f"Per-class mMV@{k} by mode ({result['n_queries']} query slides{excluded})", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _plot_k(ks: Sequence[int]) -> int:
    """PLOT_K when computed, else the computed k closest to it."""
    return min(ks, key=lambda k: (abs(k - PLOT_K), k))


def _fmt(value) -> str:
    return "" if value is None else f"{value:.3f}"
