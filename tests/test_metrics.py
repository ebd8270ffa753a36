"""Oracle tests for retrieval.evaluation.metrics: brute-force definitions on seeded random cases plus hand-computed ones."""

from __future__ import annotations

import math
import random

import pytest

from indexer.errors import QueryError
from retrieval.evaluation import metrics as m


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


# --- the SISH convention (SISH's eval.py): full-list-or-⌈k/2⌉ votes, AP over k, means over classes --------

def oracle_sish_class_scores(retrieved, labels, k):
    """Per class (SISH's metric_dict): mean vote hit and mean AP, written from SISH's eval.py definitions."""
    out = {}
    for c in dict.fromkeys(labels):
        hits, aps = [], []
        for ranked, label in zip(retrieved, labels):
            if label != c:
                continue
            top = list(ranked[:k])
            if not top:  # a query that retrieved nothing counts, and scores 0
                hits.append(0.0)
                aps.append(0.0)
                continue
            precisions = [top[: i + 1].count(c) / (i + 1) for i in range(len(top)) if top[i] == c]
            aps.append(sum(precisions) / k)
            counts = {x: top.count(x) for x in top}
            winner = max(counts, key=lambda x: (counts[x], -top.index(x)))
            full_or_strong = len(top) == k or counts[winner] >= math.ceil(k / 2)
            hits.append(float(winner == c and full_or_strong))
        out[c] = (sum(hits) / len(hits), sum(aps) / len(aps))
    return out


@pytest.mark.parametrize("seed", range(20))
def test_sish_convention_matches_its_oracle_on_random_cases(seed):
    retrieved, labels, _ = random_case(random.Random(300 + seed), max_len=7)
    for k in (1, 3, 5, 10):
        classes = oracle_sish_class_scores(retrieved, labels, k)
        report = m.retrieval_report(retrieved, labels, ks=(k,), convention="sish")
        assert report["convention"] == "sish"
        assert report["per_class"][f"mMV@{k}"] == pytest.approx({c: v[0] for c, v in classes.items()})
        assert report["per_class"][f"mAP@{k}"] == pytest.approx({c: v[1] for c, v in classes.items()})
        assert report["metrics"][f"mMV@{k}"] == pytest.approx(sum(v[0] for v in classes.values()) / len(classes))
        assert report["metrics"][f"mAP@{k}"] == pytest.approx(sum(v[1] for v in classes.values()) / len(classes))


def test_sish_hand_worked_short_lists():
    k = 5
    # full list, plain majority: both conventions count it
    assert m.vote_counts(["a", "b", "a", "c", "d"], "a", k, "sish")
    # short list of 3 with 2 votes for a: the default counts it, SISH does not (2 < ceil(5/2) = 3)
    assert m.vote_counts(["a", "a", "b"], "a", k)
    assert not m.vote_counts(["a", "a", "b"], "a", k, "sish")
    # short list of 4 with 3 votes: SISH counts it
    assert m.vote_counts(["a", "b", "a", "a"], "a", k, "sish")
    # one result: counts under the default, never under SISH at k=5; at k=1 a list of one is full
    assert m.vote_counts(["a"], "a", k) and not m.vote_counts(["a"], "a", k, "sish")
    assert m.vote_counts(["a"], "a", 1, "sish")
    # k = 4: ceil(4/2) = 2 votes suffice in a short list
    assert m.vote_counts(["a", "a", "b"], "a", 4, "sish")
    # ties go to the earliest-ranked label in both (SISH: Counter.most_common keeps first-seen order)
    assert not m.vote_counts(["b", "a", "a", "b", "c"], "a", k, "sish")
    assert m.vote_counts(["b", "a", "a", "b", "c"], "b", k, "sish")
    # no results: a miss
    assert not m.vote_counts([], "a", k, "sish")


def test_sish_hand_worked_average_precision_divides_by_k():
    ranked = ["x", "a", "a"]  # precision at ranks 2, 3: 1/2, 2/3
    assert m.average_precision_at_k(ranked, "a", 5, None, "sish") == pytest.approx((1 / 2 + 2 / 3) / 5)
    # the default divides by min(k, n_relevant) = 2: a short list that found both relevant items
    assert m.average_precision_at_k(ranked, "a", 5, n_relevant=2) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # a perfect list of 2 in a database with 2 relevant: 1.0 by default, 2/5 under SISH
    assert m.average_precision_at_k(["a", "a"], "a", 5, n_relevant=2) == 1.0
    assert m.average_precision_at_k(["a", "a"], "a", 5, None, "sish") == pytest.approx(0.4)
    assert m.average_precision_at_k([], "a", 5, None, "sish") == 0.0


def test_sish_mmv_hand_worked_macro():
    retrieved = [["a", "a", "a", "b", "b"], ["a", "a"], ["b", "b", "b"], ["b", "a"]]
    labels = ["a", "a", "b", "b"]
    # class a: full list hit, short list 2 < 3 votes miss -> 1/2; class b: 3 votes hit, short tie (b first) miss -> 1/2
    assert m.mmv_at_k(retrieved, labels, 5, "sish") == pytest.approx(0.5)
    assert m.mmv_at_k(retrieved, labels, 5) == pytest.approx(1.0)  # default: every vote counts
    # mAP (sish, macro): a: ((1+1+1)/5 + (1+1)/5)/2 = 0.5; b: ((1+1+1)/5 + (1/1)/5)/2 = 0.4
    assert m.map_at_k(retrieved, labels, 5, None, convention="sish") == pytest.approx((0.5 + 0.4) / 2)


def test_default_convention_is_documented_and_reported():
    assert m.DEFAULT_CONVENTION == "slidesearch"
    assert "the default" in m.__doc__ and "sish" in m.__doc__
    report = m.retrieval_report([["a"]], ["a"], ks=(1,), n_relevant=[1])
    assert report["convention"] == "slidesearch"
    with pytest.raises(QueryError, match="convention"):
        m.retrieval_report([["a"]], ["a"], ks=(1,), convention="trec")
    with pytest.raises(QueryError, match="n_relevant"):
        m.average_precision_at_k(["a"], "a", 1, None)
