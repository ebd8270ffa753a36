"""Explain: why a slide matched, as the prototypes and patches shown with each hit, and the hit records.

A text hit shows its present prototypes most similar to the query and its patches nearest the query; a slide
hit shows the per-prototype terms of ⟨s, s'⟩ and the patches that weigh most in the largest term; a hit with
no searched patch shows the representative patches of its best prototype (``representatives``).
"""

from __future__ import annotations

import numpy as np

from indexer import vectors as vi
from retrieval.query.arrays import MIN_MASS, first_m_per_group
from retrieval.query.results import PatchMatch, PrototypeMatch, SearchHit

EXPLAIN = 3  # prototypes and patches shown per hit


def build_hits(arrays, rows: np.ndarray, scores: np.ndarray, protos: tuple, patches: tuple) -> tuple[SearchHit, ...]:
    """Hit records for slide ``rows`` (rank order) with their explanations.

    Args:
        arrays: the index's ``IndexArrays``.
        protos: (hit index, prototype id, similarity) arrays, in display order within each hit.
        patches: (hit index, patch_row, score) arrays, in display order within each hit.
    """
    names = arrays.proto_names
    proto_lists: list[list[PrototypeMatch]] = [[] for _ in range(len(rows))]
    which, ids, sims = protos
    masses = arrays.mass[rows[which], ids].tolist()
    for hit, proto, mass, sim in zip(which.tolist(), ids.tolist(), masses, sims.tolist()):
        proto_lists[hit].append(PrototypeMatch(proto, names[proto], mass, sim))
    patch_lists: list[list[PatchMatch]] = [[] for _ in range(len(rows))]
    which, ids, sims = patches
    records = arrays.patches[ids].tolist()  # (slide, x, y, size, proto, proto_sim) per patch
    for hit, row, (_, x, y, size, proto, _), sim in zip(which.tolist(), ids.tolist(), records, sims.tolist()):
        patch_lists[hit].append(PatchMatch(row, x, y, size, sim, names[proto]))
    hits = []
    ranked = zip(rows.tolist(), scores.tolist(), proto_lists, patch_lists)
    for rank, (row, score, shown_protos, shown_patches) in enumerate(ranked, 1):
        meta = arrays.metadata[row]
        hits.append(SearchHit(rank, meta["slide_id"], row, score, meta, tuple(shown_protos), tuple(shown_patches)))
    return tuple(hits)


def explain_text(index, q: np.ndarray, hit_rows: np.ndarray, patch_slides: np.ndarray, patch_ids: np.ndarray,
                 patch_sims: np.ndarray) -> tuple[tuple, tuple]:
    """Why each text hit matched, as ``build_hits`` takes it: its present prototypes (π_k ≥ MIN_MASS) most
    similar to the query, with the exact cos(q, ẑ_k) = ⟨q, √π_k ẑ_k⟩/√π_k, and its patches nearest the query
    among the searched ones; a hit that has none of those (it came in through its sub-vectors) shows the
    representative patches of its most similar prototype that has any, scored against the query.

    Args:
        index: the open index (``retrieval.query.index.OpenIndex``).
    """
    arrays, q = index.arrays, q.astype(np.float32)
    mass = arrays.mass[hit_rows]
    cos = (index.slide_blocks(hit_rows) @ q) / np.sqrt(np.maximum(mass, 1e-12))
    cos = np.where(mass >= MIN_MASS, cos, -np.inf)
    order = np.argsort(-cos, axis=1, kind="stable")
    best = np.take_along_axis(cos, order, 1)
    which, column = np.nonzero(best[:, :EXPLAIN] > -np.inf)
    protos = (which, order[which, column], best[which, column])
    which, entries = first_m_per_group(patch_slides, hit_rows, EXPLAIN)
    patches = (which, patch_ids[entries], patch_sims[entries])
    lacking = np.setdiff1d(np.arange(len(hit_rows)), which)
    if len(lacking):
        hit, rows = representatives(arrays, hit_rows[lacking], order[lacking], best[lacking] > -np.inf)
        sims = vi.reconstruct(index.catalog.faiss("patches"), rows) @ q
        ranked = np.lexsort((-sims, hit))
        patches = tuple(np.r_[a, b[ranked]] for a, b in zip(patches, (lacking[hit], rows, sims)))
    return protos, patches


def explain_pairs(index, query_vec: np.ndarray, hit_rows: np.ndarray) -> tuple[tuple, tuple]:
    """Why each slide hit matched, as ``build_hits`` takes it: the per-prototype terms √π_k ẑ_k·√π'_k ẑ'_k of
    ⟨s, s'⟩ (largest first), and the hit's patches that weigh most in its ẑ'_k of the largest term that has
    any: those assigned to that prototype, most similar to it first. One reconstruction of the hits' slide
    vectors; the patches come from the stored per-patch assignment (``representative_patches``)."""
    arrays = index.arrays
    kp, d = arrays.n_prototypes, arrays.dim
    negative_terms = -(index.slide_blocks(hit_rows) * query_vec.reshape(kp, d)).sum(axis=2)
    order = np.argsort(negative_terms, axis=1)
    terms = -np.sort(negative_terms, axis=1)
    which, column = np.nonzero(terms[:, :EXPLAIN] > 1e-6)
    protos = (which, order[which, column], terms[which, column])
    which, patch_rows = representatives(arrays, hit_rows, order, terms > 1e-6)
    return protos, (which, patch_rows, arrays.patch_proto_sim[patch_rows])


def representatives(arrays, rows: np.ndarray, ranked: np.ndarray, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each slide row, the representative patches of the first prototype in its row of ``ranked``
    (prototype ids, best first) that is ``usable`` and has any: (index into ``rows``, patch_row) pairs."""
    shown = arrays.representative_patches(EXPLAIN)[rows[:, None], ranked]  # (slides, K, EXPLAIN), -1 pads
    usable = usable & (shown[:, :, 0] >= 0)
    chosen = np.where(usable.any(axis=1)[:, None], shown[np.arange(len(rows)), usable.argmax(axis=1)], -1)
    which, column = np.nonzero(chosen >= 0)
    return which, chosen[which, column]
