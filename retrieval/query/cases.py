"""Case-level and cross-stain search: a case is the set of its slides (MADELEINE: stains as views of one biology).

A case's vector is a fusion of its slides' vectors in one slide space (``proto``: ProAlign slide vectors,
``mean``: mean-pool, or an imported slide-encoder space):

- ``concat``: per stain, the normalised mean of the case's slides of that stain; the blocks concatenated
  (one per stain of the index, zeros where the case has none) and scaled to unit norm. Two cases compare
  stain with stain: ``⟨c, c'⟩ = Σ_shared stains cos(mean_s, mean'_s) / √(blocks·blocks')``.
- ``mean``: the normalised mean of all the case's slides, whatever their stain.
- ``max``: no case vector; a case scores its best slide (what ``search slide --group case`` returns).

Scores are exact cosines of the fused vectors, computed from slide-level inner products: the query's few
block vectors against every allowed slide (one matrix-vector product per stain), and each case block's norm
from the inner products of the case's own slides (a case has few). So no case vector is stored. Case
vectors are derived when a searcher opens, not written into segments: a case's slides may sit in different
segments (an IHC slide added a year after the H&E), and ``case_id``/``stain`` come from the metadata
version, which a CSV changes without touching any segment; stored case vectors would go stale on both.

Cross-stain (``target_stain``): candidate cases are represented by their slides of that stain only, and the
query by the mean of its slides (any stain), so an IHC slide finds cases through their H&E slides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from indexer.errors import QueryError
from retrieval.query.options import FUSIONS
from retrieval.query.results import SearchHit, hit_json

DEFAULT_FUSION = "mean"
UNKNOWN_STAIN = "unknown"


@dataclass(frozen=True)
class CaseHit:
    """One retrieved case: its slides by stain, each with its similarity to the query, and the slide that
    matched best, explained (prototype terms and patches, as a slide hit)."""

    rank: int
    case_id: str
    score: float
    slides: tuple[dict[str, Any], ...]  # {"slide_id", "stain", "score"} best first
    matched: SearchHit
    matched_stain: str


@dataclass(frozen=True)
class CaseResult:
    """Ranked cases for one query, with how they were scored."""

    kind: str  # "case"
    query: str
    hits: tuple[CaseHit, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (the ``--json`` shape: kind, query, hits, details, like slide results)."""
        return {"kind": self.kind, "query": self.query, "details": dict(self.details), "hits": [
            {"rank": h.rank, "case_id": h.case_id, "score": h.score,
             "stains": slides_by_stain(h.slides), "slides": list(h.slides),
             "matched": {**hit_json(h.matched), "stain": h.matched_stain}} for h in self.hits]}

    @property
    def case_ids(self) -> list[str]:
        return [h.case_id for h in self.hits]


def slides_by_stain(slides) -> dict[str, list[str]]:
    """stain → slide ids, from a case hit's ``slides`` (best first)."""
    out: dict[str, list[str]] = {}
    for s in slides:
        out.setdefault(s["stain"], []).append(s["slide_id"])
    return out


class CaseSearcher:
    """Case-level queries over an open :class:`retrieval.search.SlideSearcher` (same version, same arrays).

    Args:
        searcher: the slide searcher.
    """

    def __init__(self, searcher):
        self.searcher = searcher

    @cached_property
    def table(self) -> dict[str, Any]:
        """ok slides: rows, slide_id, case index, stain; case ids; the distinct stains."""
        slides = [s for s in self.searcher.catalog.slides.to_pylist() if s["status"] == "ok"]
        case_ids = sorted({str(s["case_id"]) for s in slides})
        case_of = {c: i for i, c in enumerate(case_ids)}
        stains = [s["stain"] or UNKNOWN_STAIN for s in slides]
        return {"rows": np.asarray([s["slide_row"] for s in slides], np.int64), "slide_ids": [s["slide_id"] for s in slides],
                "case": np.asarray([case_of[str(s["case_id"])] for s in slides], np.int64), "stain": stains,
                "case_ids": case_ids, "case_of": case_of, "stains": sorted(set(stains)),
                "slides": slides}

    def vectors(self, space: str) -> np.ndarray:
        """(ok slides, dim) vectors of the space, in ``table`` order (loaded once per space)."""
        cache = self.__dict__.setdefault("_vectors", {})
        if space not in cache:
            from retrieval.query.spaces import space_vectors

            cache[space] = space_vectors(self.searcher, space, self.table["rows"])
        return cache[space]

    def query_rows(self, query: str) -> tuple[np.ndarray, str]:
        """Positions (in ``table`` order) of the query's slides and the query's case id: a case id (all its
        slides) or a slide id (that slide alone)."""
        t = self.table
        if query in t["case_of"]:
            return np.flatnonzero(t["case"] == t["case_of"][query]), query
        row = self.searcher.arrays.row_of(query)
        if row is None:
            shown = repr(str(query)[:80])
            raise QueryError(f"unknown case or slide {shown}: neither a case_id nor an indexed slide_id of this index")
        at = np.flatnonzero(t["rows"] == row)
        return at, t["case_ids"][t["case"][at[0]]]

    def search(self, query: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
               target_stain: str | None = None, fusion: str = DEFAULT_FUSION, space: str = "proto",
               query_stain: str | None = None, include_own_case: bool = False) -> CaseResult:
        """Cases like a case (by case_id) or a slide (by slide_id); the query's own case is left out unless
        ``include_own_case`` (a slide query may then find its own case through another stain).

        Args:
            query: a case_id, or an indexed slide_id.
            k: number of cases.
            where: SQL filter over slide columns (a case is represented by its slides that pass it).
            exclude_same: also leave out cases with a slide sharing this column's value with a query slide.
            target_stain: represent candidate cases by their slides of this stain only (cross-stain search).
            fusion: ``concat``, ``mean`` or ``max`` (module docstring).
            space: the slide space (``proto``, ``mean`` or an imported slide-encoder name).
            query_stain: use only the query's slides of this stain (e.g. an H&E-only baseline).
            include_own_case: keep the query's case among the candidates (never the query slides themselves).
        """
        if k < 1:
            raise QueryError(f"k must be at least 1 (got {k})")
        if fusion not in FUSIONS:
            raise QueryError(f"unknown fusion {fusion!r}: use {', '.join(FUSIONS)}")
        t = self.table
        q_at, q_case = self.query_rows(query)
        if query_stain is not None:
            q_at = q_at[[t["stain"][i] == query_stain for i in q_at]]
            if len(q_at) == 0:
                raise QueryError(f"{query!r} has no slide of stain {query_stain!r}")
        allowed = self.allowed_mask(where, exclude_same, q_at, target_stain, include_own_case)
        vectors = self.vectors(space)
        one_key = target_stain is not None or fusion != "concat"
        keys = np.zeros(len(t["rows"]), np.int64) if one_key else np.asarray([t["stains"].index(s) for s in t["stain"]])
        score, slide_score = fused_scores(vectors, t["case"], keys, q_at, allowed, len(t["case_ids"]), fusion)
        order = np.lexsort((np.arange(len(score)), -np.round(score, 6)))
        top = [c for c in order if np.isfinite(score[c])][:k]
        hits = self._case_hits(top, score, slide_score, allowed, q_at)
        details = {"fusion": fusion, "space": space, "target_stain": target_stain, "exclude_same": exclude_same,
                   "query_case": q_case, "query_slides": [{"slide_id": t["slide_ids"][i], "stain": t["stain"][i]}
                                                          for i in q_at]}
        return CaseResult("case", str(query), hits, details)

    def allowed_mask(self, where, exclude_same, q_at, target_stain, include_own_case: bool = False) -> np.ndarray:
        """Boolean mask (table order) of candidate slides: filter, not the query's case, exclusions, stain."""
        t = self.table
        catalog = self.searcher.catalog
        rows = catalog.allowed_slide_rows(where)
        allowed = np.ones(len(t["rows"]), bool) if rows is None else np.isin(t["rows"], rows)
        if include_own_case:
            allowed[q_at] = False
        else:
            allowed &= ~np.isin(t["case"], t["case"][q_at])
        if exclude_same:
            if exclude_same not in catalog.slides.column_names:
                raise QueryError(f"--exclude-same {exclude_same!r}: no such column (columns: "
                                 f"{', '.join(catalog.slides.column_names)})")
            values = [s[exclude_same] for s in t["slides"]]
            mine = {values[i] for i in q_at} - {None}
            allowed &= np.asarray([v not in mine for v in values], bool)
        if target_stain is not None:
            if target_stain not in t["stains"]:
                raise QueryError(f"--target-stain {target_stain!r}: no slide has that stain (stains: "
                                 f"{', '.join(t['stains'])})")
            allowed &= np.asarray([s == target_stain for s in t["stain"]], bool)
        return allowed

    def _case_hits(self, top, score, slide_score, allowed, q_at) -> tuple[CaseHit, ...]:
        """Case hits with their slides by stain and the best slide explained."""
        t = self.table
        members = [np.flatnonzero((t["case"] == c) & allowed) for c in top]
        best = [m[np.argmax(slide_score[m])] for m in members]
        searcher = self.searcher
        query_proto = searcher.arrays.slide_vectors(searcher.catalog, t["rows"][q_at], "slides").mean(axis=0)
        matched = searcher.slide_hits(t["rows"][best], slide_score[best], query_proto) if best else ()
        hits = []
        for rank, (c, m, b, hit) in enumerate(zip(top, members, best, matched), 1):
            slides = tuple({"slide_id": t["slide_ids"][i], "stain": t["stain"][i], "score": float(slide_score[i])}
                           for i in m[np.argsort(-slide_score[m], kind="stable")])
            hits.append(CaseHit(rank, t["case_ids"][c], float(score[c]), slides, hit, t["stain"][b]))
        return tuple(hits)


def fused_scores(vectors: np.ndarray, case: np.ndarray, keys: np.ndarray, q_at: np.ndarray, allowed: np.ndarray,
                 n_cases: int, fusion: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact fused-case cosines of the query slides ``q_at`` against every case's allowed slides.

    Args:
        vectors: (slides, dim) unit slide vectors. case: case index per slide. keys: block (stain) per slide
            (all zero for one block). q_at: the query's slide positions. allowed: candidate slides.
        n_cases: number of cases. fusion: ``concat``/``mean`` (block means) or ``max`` (best slide).

    Returns:
        (score per case, -inf for cases with no allowed slide; per slide, its term: the cosine of the slide
        with the query block of its stain, the evidence each slide brings).

    >>> v = np.eye(3, dtype=np.float32)[[0, 1, 0, 2]]   # slides 0, 1 | 2, 3 in cases 0 | 1
    >>> s, _ = fused_scores(v, np.array([0, 0, 1, 1]), np.zeros(4, int), np.array([0]), np.array([0, 0, 1, 1], bool), 2, "mean")
    >>> s.round(4).tolist()   # cos(e0, (e0 + e2)/√2)
    [-inf, 0.7071]
    """
    n_keys = int(keys.max()) + 1 if len(keys) else 1
    q_blocks = np.zeros((n_keys, vectors.shape[1]), np.float64)
    np.add.at(q_blocks, keys[q_at], vectors[q_at].astype(np.float64))
    q_norm = np.linalg.norm(q_blocks, axis=1)
    present = q_norm > 0
    q_blocks[present] /= q_norm[present, None]
    sims = (vectors @ q_blocks.T.astype(vectors.dtype))[np.arange(len(keys)), keys].astype(np.float64)
    sims = np.where(allowed, sims, 0.0)  # float32 product: no float64 copy of every slide vector per query
    score = np.full(n_cases, -np.inf)
    has = np.zeros(n_cases, bool)
    has[case[allowed]] = True
    if fusion == "max":
        np.maximum.at(score, case[allowed], sims[allowed])
        return score, sims
    group = case * n_keys + keys
    block_norm = np.sqrt(np.maximum(_group_gram(vectors, group, allowed, n_cases * n_keys), 0.0))
    dots = np.bincount(group[allowed], weights=sims[allowed], minlength=n_cases * n_keys)
    with np.errstate(invalid="ignore", divide="ignore"):
        block = np.where(block_norm > 0, dots / block_norm, 0.0).reshape(n_cases, n_keys)
    n_blocks = (block_norm.reshape(n_cases, n_keys) > 0).sum(axis=1)
    total = block.sum(axis=1) / np.sqrt(np.maximum(n_blocks, 1) * max(int(present.sum()), 1))
    score[has] = total[has]
    return score, sims


def _group_gram(vectors: np.ndarray, group: np.ndarray, allowed: np.ndarray, n_groups: int,
                chunk: int = 1024) -> np.ndarray:
    """‖Σ_{i in group} v_i‖² for every group over allowed slides, summing ``chunk`` groups at a time (memory:
    ``chunk`` vectors, whatever the number of cases)."""
    idx = np.flatnonzero(allowed)
    order = idx[np.argsort(group[idx], kind="stable")]
    g = group[order]
    out = np.zeros(n_groups, np.float64)
    if len(order) == 0:
        return out
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    for lo in range(0, len(starts), chunk):
        first, last = starts[lo], starts[lo + chunk] if lo + chunk < len(starts) else len(order)
        sums = np.add.reduceat(vectors[order[first:last]].astype(np.float64), starts[lo:lo + chunk] - first, axis=0)
        out[g[starts[lo:lo + chunk]]] = (sums * sums).sum(axis=1)
    return out


def stain_where(where: str | None, stain: str) -> str:
    """``where`` AND ``stain = '<stain>'`` (the stain quoted as an SQL string).

    >>> stain_where("organ = 'colon'", "H&E")
    "(organ = 'colon') AND stain = 'H&E'"
    """
    clause = "stain = '" + stain.replace("'", "''") + "'"
    return f"({where}) AND {clause}" if where and where.strip() else clause


def search_slide_options(searcher, slide: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                         space: str = "proto", target_stain: str | None = None, group: str | None = None):
    """`search slide` with ``--space``, ``--target-stain`` or ``--group case``: a SearchResult of slides, or a
    CaseResult (``group='case'``: each case scored by its best slide, the ``max`` fusion)."""
    from retrieval.query.spaces import search_space

    if group is not None:
        if group != "case":
            raise QueryError(f"--group {group!r}: only 'case' is supported")
        return CaseSearcher(searcher).search(slide, k=k, where=where, exclude_same=exclude_same,
                                             target_stain=target_stain, fusion="max", space=space)
    if target_stain is not None:
        stains = CaseSearcher(searcher).table["stains"]
        if target_stain not in stains:
            raise QueryError(f"--target-stain {target_stain!r}: no slide has that stain (stains: {', '.join(stains)})")
        where = stain_where(where, target_stain)
    result = search_space(searcher, slide, k=k, where=where, exclude_same=exclude_same, space=space)
    result.details["target_stain"] = target_stain
    row = searcher.arrays.row_of(slide)
    if row is not None:
        result.details["query_stain"] = searcher.arrays.metadata[row].get("stain")
    return result


def slide_query(searcher, slide: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                mode: str = "proto", space: str | None = None, target_stain: str | None = None, group: str | None = None):
    """`search slide` with all its options, as the CLI and the HTTP API run it: the plain slide search, or (with
    ``space``, ``target_stain`` or ``group``) ``search_slide_options`` in ``space`` (default ``mode``)."""
    if group is None and space is None and target_stain is None:
        return searcher.search_slide(slide, k=k, where=where, exclude_same=exclude_same, mode=mode)
    return search_slide_options(searcher, slide, k=k, where=where, exclude_same=exclude_same, space=space or mode,
                                target_stain=target_stain, group=group)
