"""Retrieval metrics (mMV@k, mAP@k, Acc@k, Recall@k) as pure functions over ranked label lists.

Two conventions for mMV@k and mAP@k (every report states which one it used, ``"convention"``):

* ``slidesearch`` (**the default**, :data:`DEFAULT_CONVENTION`): the majority vote is taken over the
  results present, however few; AP@k divides by ``min(k, n_relevant)``, so a perfect short list scores 1;
  mAP@k is the mean over queries.
* ``sish``: SISH's ``eval.py`` (Chen et al., Nat. Biomed. Eng. 2022). A query's vote counts only when
  its list is full (``k`` results) or the winning label holds at least ``⌈k/2⌉`` of them; AP@k divides
  by ``k`` (SISH hard-codes 5, its site-level ``k``); mMV@k and mAP@k are both the mean over classes of
  the per-class means (SISH's ``metric_dict`` holds those per-class values). With ``k=5`` and full
  lists, the per-class numbers equal SISH's.

The two differ only on short lists (after a filter, or in a small database) and when relevant items
are fewer than ``k``.

Conventions shared by every function here:

* ``retrieved_labels[q]`` is the ranked list (best first) of the labels of what query ``q`` retrieved,
  the query itself already left out; it may be shorter than ``k`` (the search found fewer results).
* Only the first ``k`` entries count; a query with no results counts as a miss (score 0).
* "m" in mMV means *macro*: the mean over classes of the per-class mean, so rare classes weigh as much
  as common ones (the SISH evaluation). mAP@k and Acc@k are means over queries unless ``average="macro"``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Literal, Mapping, Sequence

from indexer.errors import QueryError

Label = Hashable
Average = Literal["micro", "macro"]
Convention = Literal["slidesearch", "sish"]
CONVENTIONS = ("slidesearch", "sish")
DEFAULT_CONVENTION: Convention = "slidesearch"


def majority_vote(labels: Sequence[Label], k: int) -> Label | None:
    """The most frequent label among the first ``k``; ties go to the tied label ranked earliest.

    Fewer than ``k`` labels: vote over those present. No labels: ``None``.

    >>> majority_vote(["b", "a", "a", "b", "c"], 5)   # a and b tie at 2; b appears first
    'b'
    >>> majority_vote(["b", "a", "a", "b", "c"], 3)
    'a'
    >>> majority_vote([], 5) is None
    True
    """
    _check_k(k)
    counts: dict[Label, int] = {}
    for label in labels[:k]:
        counts[label] = counts.get(label, 0) + 1  # dict order = order of first appearance
    return max(counts, key=counts.__getitem__) if counts else None  # max keeps the first of equal counts


def vote_counts(ranked: Sequence[Label], label: Label, k: int, convention: Convention = DEFAULT_CONVENTION) -> bool:
    """Whether the majority vote of the top ``k`` of one list is ``label`` and counts under ``convention``.

    >>> vote_counts(["a", "a", "b"], "a", 5)   # slidesearch: a vote over what is there
    True
    >>> vote_counts(["a", "a", "b"], "a", 5, "sish")   # sish: 2 votes < ceil(5/2) in a short list
    False
    >>> vote_counts(["a", "a", "a", "b"], "a", 5, "sish")
    True
    """
    winner = majority_vote(ranked, k)
    if winner != label or winner is None:
        return False
    if check_convention(convention) == "sish" and len(ranked[:k]) < k:
        return list(ranked[:k]).count(winner) >= math.ceil(k / 2)
    return True


def majority_vote_hits(retrieved_labels: Sequence[Sequence[Label]], query_labels: Sequence[Label],
                       k: int, convention: Convention = DEFAULT_CONVENTION) -> list[bool]:
    """Per query: does the majority vote of the top ``k`` equal the query's label (and count, see :func:`vote_counts`)?"""
    _check_lengths(retrieved_labels, query_labels)
    return [vote_counts(ranked, label, k, convention) for ranked, label in zip(retrieved_labels, query_labels)]


def mmv_at_k(retrieved_labels: Sequence[Sequence[Label]], query_labels: Sequence[Label], k: int,
             convention: Convention = DEFAULT_CONVENTION) -> float:
    """mMV@k: majority-vote accuracy at ``k``, macro-averaged over the query classes.

    >>> mmv_at_k([["a", "a", "b"], ["b", "a", "a"], ["b"]], ["a", "a", "b"], 3)   # class a: 2/2, class b: 1/1
    1.0
    >>> mmv_at_k([["a", "b", "b"], ["a"], []], ["a", "a", "b"], 3)   # a: 1/2, b: 0/1 (no results)
    0.25
    >>> mmv_at_k([["a", "b", "b"], ["a"], []], ["a", "a", "b"], 3, "sish")   # ["a"]: 1 vote < ceil(3/2)
    0.0
    """
    return aggregate(majority_vote_hits(retrieved_labels, query_labels, k, convention), query_labels, "macro")


def hit_at_k(retrieved_labels: Sequence[Sequence[Label]], query_labels: Sequence[Label], k: int) -> list[bool]:
    """Per query: is at least one of the top ``k`` of the query's label?"""
    _check_k(k)
    _check_lengths(retrieved_labels, query_labels)
    return [label in ranked[:k] for ranked, label in zip(retrieved_labels, query_labels)]


def acc_at_k(retrieved_labels: Sequence[Sequence[Label]], query_labels: Sequence[Label], k: int,
             average: Average = "micro") -> float:
    """Acc@k: fraction of queries with at least one same-label item in the top ``k``.

    >>> acc_at_k([["b", "a"], ["b", "b"]], ["a", "a"], 2)
    0.5
    >>> acc_at_k([["b", "a"], ["b", "b"]], ["a", "a"], 1)
    0.0
    """
    return aggregate(hit_at_k(retrieved_labels, query_labels, k), query_labels, average)


def average_precision_at_k(ranked: Sequence[Label], label: Label, k: int, n_relevant: int | None,
                           convention: Convention = DEFAULT_CONVENTION) -> float:
    """AP@k of one ranked list: ``Σ_{i≤k, relevant i} precision@i`` divided by ``min(k, n_relevant)``
    (``slidesearch``) or by ``k`` (``sish``, where ``n_relevant`` is not needed and may be None).

    ``n_relevant`` is how many items of ``label`` the database holds (the query itself excluded), so
    a list that misses relevant items it had room for is penalised; with no relevant items AP is 0.

    >>> average_precision_at_k(["a", "b", "a"], "a", 3, n_relevant=2)   # (1/1 + 2/3) / 2
    0.8333333333333333
    >>> average_precision_at_k(["a", "b", "a"], "a", 3, n_relevant=5)   # (1/1 + 2/3) / 3
    0.5555555555555555
    >>> average_precision_at_k(["a", "b", "a"], "a", 5, None, "sish")   # (1/1 + 2/3) / 5
    0.3333333333333333
    """
    _check_k(k)
    hits, total = 0, 0.0
    for rank, item in enumerate(ranked[:k], start=1):
        if item == label:
            hits += 1
            total += hits / rank
    if check_convention(convention) == "sish":
        return total / k
    if n_relevant is None:
        raise QueryError("AP@k under the slidesearch convention needs n_relevant")
    denominator = min(k, n_relevant)
    if hits > denominator:
        raise QueryError(f"{hits} relevant items retrieved for label {label!r} but n_relevant is {n_relevant}")
    return total / denominator if denominator else 0.0


def map_at_k(retrieved_labels: Sequence[Sequence[Label]], query_labels: Sequence[Label], k: int,
             n_relevant: Mapping[Label, int] | Sequence[int] | None, average: Average | None = None,
             convention: Convention = DEFAULT_CONVENTION) -> float:
    """mAP@k: mean AP@k over queries (see :func:`average_precision_at_k` for the denominator).

    Args:
        n_relevant: per label, how many database items carry it (leave-one-out: subtract the query
            yourself, or pass a per-query sequence of counts); None is allowed under ``sish``.
        average: ``micro`` (over queries) or ``macro`` (over classes); None: the convention's own
            (``slidesearch``: micro, ``sish``: macro).

    >>> map_at_k([["a", "b"], ["b", "b"]], ["a", "b"], 2, n_relevant=[1, 3])
    1.0
    >>> map_at_k([["a", "b"], ["b", "b"]], ["a", "b"], 2, None, convention="sish")   # a: 1/2, b: 2/2
    0.75
    """
    average = average or MAP_AVERAGE[check_convention(convention)]
    return aggregate(average_precisions(retrieved_labels, query_labels, k, n_relevant, convention), query_labels, average)


MAP_AVERAGE: dict[str, Average] = {"slidesearch": "micro", "sish": "macro"}


def average_precisions(retrieved_labels: Sequence[Sequence[Label]], query_labels: Sequence[Label], k: int,
                       n_relevant: Mapping[Label, int] | Sequence[int] | None,
                       convention: Convention = DEFAULT_CONVENTION) -> list[float]:
    """AP@k of every query, ``n_relevant`` given per label (mapping), per query (sequence) or None (``sish``)."""
    _check_lengths(retrieved_labels, query_labels)
    if n_relevant is None:
        counts = [None] * len(query_labels)
    elif isinstance(n_relevant, Mapping):
        counts = [n_relevant.get(label, 0) for label in query_labels]
    else:
        counts = list(n_relevant)
        _check_lengths(counts, query_labels)
    return [average_precision_at_k(r, label, k, n, convention)
            for r, label, n in zip(retrieved_labels, query_labels, counts)]


def recall_at_k(retrieved_ids: Sequence[Sequence[Hashable]], target_ids: Sequence[Hashable], k: int) -> float:
    """Recall@k for paired retrieval (text ↔ slide): fraction of queries whose paired item is in the top ``k``.

    >>> recall_at_k([["s2", "s1"], ["s9", "s3"]], ["s1", "s2"], 2)
    0.5
    """
    _check_k(k)
    _check_lengths(retrieved_ids, target_ids)
    if not target_ids:
        return float("nan")
    return sum(target in ranked[:k] for ranked, target in zip(retrieved_ids, target_ids)) / len(target_ids)


def per_class(values: Sequence[float], query_labels: Sequence[Label]) -> dict[Label, float]:
    """Mean of per-query ``values`` for each query label (classes in order of first appearance).

    >>> per_class([1, 0, 1], ["a", "b", "a"])
    {'a': 1.0, 'b': 0.0}
    """
    _check_lengths(values, query_labels)
    groups: dict[Label, list[float]] = defaultdict(list)
    for value, label in zip(values, query_labels):
        groups[label].append(float(value))
    return {label: sum(v) / len(v) for label, v in groups.items()}


def aggregate(values: Sequence[float], query_labels: Sequence[Label], average: Average = "micro") -> float:
    """Mean of per-query ``values`` (``micro``) or mean of the per-class means (``macro``); NaN when empty."""
    if average not in ("micro", "macro"):
        raise QueryError(f"average must be 'micro' or 'macro', got {average!r}")
    pool = list(per_class(values, query_labels).values()) if average == "macro" else [float(v) for v in values]
    return sum(pool) / len(pool) if pool else float("nan")


def retrieval_report(retrieved_labels: Sequence[Sequence[Label]], query_labels: Sequence[Label],
                     ks: Sequence[int] = (1, 3, 5),
                     n_relevant: Mapping[Label, int] | Sequence[int] | None = None,
                     convention: Convention = DEFAULT_CONVENTION) -> dict:
    """mMV@k, Acc@k and mAP@k for each ``k``, overall and per class, under ``convention``.

    mAP@k needs ``n_relevant`` (per label or per query) under ``slidesearch``; ``sish`` always has it.

    Returns:
        ``{"convention", "n_queries", "metrics": {"mMV@5": float, ...}, "per_class": {"mMV@5": {label: float}, ...}}``.
    """
    check_convention(convention)
    scores: dict[str, list[float]] = {}
    for k in ks:
        scores[f"mMV@{k}"] = majority_vote_hits(retrieved_labels, query_labels, k, convention)
        scores[f"Acc@{k}"] = hit_at_k(retrieved_labels, query_labels, k)
        if n_relevant is not None or convention == "sish":
            scores[f"mAP@{k}"] = average_precisions(retrieved_labels, query_labels, k, n_relevant, convention)
    averages = {"mMV": "macro", "Acc": "micro", "mAP": MAP_AVERAGE[convention]}
    return {
        "convention": convention,
        "n_queries": len(query_labels),
        "metrics": {name: aggregate(v, query_labels, averages[name.split("@")[0]]) for name, v in scores.items()},
        "per_class": {name: per_class(v, query_labels) for name, v in scores.items()},
    }


def check_convention(convention: str) -> Convention:
    """``convention`` when it is one of :data:`CONVENTIONS`, else a QueryError."""
    if convention not in CONVENTIONS:
        raise QueryError(f"unknown metric convention {convention!r}: use {' or '.join(CONVENTIONS)}")
    return convention  # type: ignore[return-value]


def _check_k(k: int) -> None:
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}")


def _check_lengths(per_query: Sequence, query_labels: Sequence) -> None:
    if len(per_query) != len(query_labels):
        raise QueryError(f"{len(per_query)} result lists for {len(query_labels)} queries")
