"""Oracle tests for retrieval.metrics: brute-force definitions on seeded random cases plus hand-computed ones."""

from __future__ import annotations

import math
import random

import pytest

from indexer.errors import QueryError
from retrieval import metrics as m


# --- brute-force oracles, written from the definitions and independent of the implementation -------------

def oracle_vote(ranked, k):
    top = list(ranked[:k])
    if not top:
        return None
    best = max(top.count(label) for label in top)
    tied = {label for label in top if top.count(label) == best}
    return next(label for label in top if label in tied)  # earliest-ranked tied label


def oracle_ap(ranked, label, k, n_relevant):
    denominator = min(k, n_relevant)
    if denominator == 0:
        return 0.0
    top = list(ranked[:k])
    precisions = [sum(x == label for x in top[: i + 1]) / (i + 1) for i in range(len(top)) if top[i] == label]
    return sum(precisions) / denominator


def oracle_macro(per_query, labels):
    classes = sorted(set(labels))
    return sum(
        sum(v for v, l in zip(per_query, labels) if l == c) / labels.count(c) for c in classes
    ) / len(classes)


def random_case(rng: random.Random, n_queries=40, n_classes=4, max_len=8):
    """Queries with labels, a database count per label, and ranked lists drawn from that database."""
    classes = [f"c{i}" for i in range(n_classes)]
    database = [rng.choice(classes) for _ in range(rng.randint(n_queries, 3 * n_queries))]
    query_labels = [rng.choice(classes) for _ in range(n_queries)]
    retrieved = []
    for _ in query_labels:
        pool = database[:]
        rng.shuffle(pool)
        retrieved.append(pool[: rng.randint(0, max_len)])  # sometimes fewer than k, sometimes none
    return retrieved, query_labels, {c: database.count(c) for c in classes}


@pytest.mark.parametrize("seed", range(25))
def test_metrics_match_brute_force_on_random_cases(seed):
    rng = random.Random(seed)
    retrieved, labels, counts = random_case(rng)
    for k in (1, 2, 3, 5, 10):
        votes = [oracle_vote(r, k) == l for r, l in zip(retrieved, labels)]
        assert m.mmv_at_k(retrieved, labels, k) == pytest.approx(oracle_macro(votes, labels))
        hits = [any(x == l for x in r[:k]) for r, l in zip(retrieved, labels)]
        assert m.acc_at_k(retrieved, labels, k) == pytest.approx(sum(hits) / len(hits))
        assert m.acc_at_k(retrieved, labels, k, average="macro") == pytest.approx(oracle_macro(hits, labels))
        aps = [oracle_ap(r, l, k, counts[l]) for r, l in zip(retrieved, labels)]
        assert m.map_at_k(retrieved, labels, k, counts) == pytest.approx(sum(aps) / len(aps))
        per_query_counts = [counts[l] for l in labels]
        assert m.map_at_k(retrieved, labels, k, per_query_counts) == pytest.approx(sum(aps) / len(aps))
        assert all(0.0 <= ap <= 1.0 for ap in aps)


@pytest.mark.parametrize("seed", range(10))
def test_majority_vote_matches_oracle_on_tie_heavy_lists(seed):
    rng = random.Random(100 + seed)
    for _ in range(200):
        ranked = [rng.choice("ab") for _ in range(rng.randint(0, 7))]  # two labels: ties are frequent
        for k in range(1, 8):
            assert m.majority_vote(ranked, k) == oracle_vote(ranked, k)


def test_hand_computed_majority_votes():
    assert m.majority_vote(["a", "b", "b", "a", "c"], 5) == "a"  # a, b tie at 2; a at rank 1
    assert m.majority_vote(["c", "a", "b", "b", "a"], 5) == "a"  # a, b tie; a first at rank 2
    assert m.majority_vote(["c", "a", "b"], 3) == "c"  # three-way tie of ones
    assert m.majority_vote(["a", "b", "b"], 10) == "b"  # fewer than k: vote over what is there
    assert m.majority_vote(["a", "b", "b"], 1) == "a"
    assert m.majority_vote([], 3) is None


def test_hand_computed_mmv_is_macro_over_classes():
    retrieved = [["a", "a", "b"], ["b", "b", "a"], ["a"], ["b", "a"], []]
    labels = ["a", "a", "a", "b", "b"]
    # class a: hit, miss, hit (fewer than k) -> 2/3; class b: hit (tie -> b ranked first), miss (none) -> 1/2
    assert m.mmv_at_k(retrieved, labels, 3) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m.per_class(m.majority_vote_hits(retrieved, labels, 3), labels) == pytest.approx({"a": 2 / 3, "b": 0.5})


def test_hand_computed_average_precision_and_denominator():
    ranked = ["x", "a", "a", "y", "a"]
    # precision at the relevant ranks 2, 3, 5: 1/2, 2/3, 3/5
    assert m.average_precision_at_k(ranked, "a", 5, n_relevant=3) == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert m.average_precision_at_k(ranked, "a", 5, n_relevant=10) == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 5)
    assert m.average_precision_at_k(ranked, "a", 3, n_relevant=10) == pytest.approx((1 / 2 + 2 / 3) / 3)
    assert m.average_precision_at_k(["a", "a"], "a", 5, n_relevant=2) == 1.0  # short list, all found
    assert m.average_precision_at_k(["a"], "a", 5, n_relevant=2) == 0.5  # fewer than k, one relevant missed
    assert m.average_precision_at_k([], "a", 5, n_relevant=2) == 0.0
    assert m.average_precision_at_k(["b"], "a", 5, n_relevant=0) == 0.0  # nothing to find counts as 0
    with pytest.raises(QueryError):
        m.average_precision_at_k(["a", "a"], "a", 5, n_relevant=1)  # inconsistent counts


def test_acc_and_recall_hand_computed():
    assert m.acc_at_k([["b", "a"], ["b"], []], ["a", "a", "b"], 2) == pytest.approx(1 / 3)
    assert m.acc_at_k([["b", "a"], ["b"], []], ["a", "a", "b"], 1) == 0.0
    ranked = [["s3", "s1", "s2"], ["s2"], [], ["s9", "s8", "s4"]]
    targets = ["s1", "s2", "s3", "s4"]
    assert [m.recall_at_k(ranked, targets, k) for k in (1, 2, 3)] == [0.25, 0.5, 0.75]
    assert math.isnan(m.recall_at_k([], [], 5))


def test_metrics_grow_with_k_where_they_must():
    rng = random.Random(5)
    retrieved, labels, counts = random_case(rng, n_queries=60)
    accs = [m.acc_at_k(retrieved, labels, k) for k in range(1, 10)]
    assert accs == sorted(accs)
    ids = [[f"i{j}" for j in rng.sample(range(30), 8)] for _ in labels]
    targets = [f"i{rng.randrange(30)}" for _ in labels]
    recalls = [m.recall_at_k(ids, targets, k) for k in range(1, 10)]
    assert recalls == sorted(recalls)


def test_retrieval_report_collects_overall_and_per_class():
    retrieved, labels, counts = random_case(random.Random(9))
    report = m.retrieval_report(retrieved, labels, ks=(1, 5), n_relevant=counts)
    assert report["n_queries"] == len(labels)
    assert set(report["metrics"]) == {"mMV@1", "Acc@1", "mAP@1", "mMV@5", "Acc@5", "mAP@5"}
    assert report["metrics"]["mMV@5"] == pytest.approx(m.mmv_at_k(retrieved, labels, 5))
    assert report["metrics"]["mAP@5"] == pytest.approx(m.map_at_k(retrieved, labels, 5, counts))
    assert report["per_class"]["Acc@5"] == pytest.approx(m.per_class(m.hit_at_k(retrieved, labels, 5), labels))
    assert set(report["per_class"]["mMV@1"]) == set(labels)
    assert "mAP@1" not in m.retrieval_report(retrieved, labels, ks=(1,))["metrics"]


@pytest.mark.parametrize("call", [
    lambda: m.mmv_at_k([["a"]], ["a", "b"], 1),
    lambda: m.acc_at_k([["a"]], ["a"], 0),
    lambda: m.map_at_k([["a"]], ["a"], 1, [1, 2]),
    lambda: m.acc_at_k([["a"]], ["a"], 1, average="weighted"),
    lambda: m.recall_at_k([["a"]], ["a", "b"], 1),
])
def test_bad_input_is_a_query_error(call):
    with pytest.raises(QueryError):
        call()


def test_metrics_accept_non_string_labels():
    retrieved = [[1, 2, 2], [1, 2], [(3, "x")]]
    labels = [2, 1, (3, "x")]
    assert m.mmv_at_k(retrieved, labels, 3) == 1.0
    assert list(m.per_class([1, 0, 1], labels)) == [2, 1, (3, "x")]
