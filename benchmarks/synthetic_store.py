"""A clustered synthetic collection written through the store's own writer (benchmarks/search.py, growth.py).

Vectors: K prototypes P; 32 morphology centres per prototype; per slide, masses π ~ Dirichlet(α of its label),
sub-vectors ẑ_k = normalize(a centre of prototype k + noise), ``patches`` patches drawn from π around ẑ_k;
slide vector normalize(concat_k √π_k ẑ_k) (DESIGN §3), mean vector = mean of the patches. Every slide has a
label (``c0`` … ``c9``, equally likely), a patient and a stain in the metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from indexer.aggregation.aggregate import l2_normalize
from indexer.store.identity import IndexSettings
from indexer.store.reader import Snapshot
from indexer.store.segments import SlideRows
from indexer.store.writer import IndexWriter

WHERE = "label = 'c3'"  # one of N_LABELS equally likely labels: about 10 % of the slides
N_LABELS = 10
CENTRES_PER_PROTOTYPE = 32  # K·32 morphology centres (256 for K = 8)
CHUNK = 10_000  # slides generated per block (bounds the temporaries at 100k slides)


@dataclass(frozen=True)
class SyntheticSpec:
    """A synthetic collection: ``n_slides`` slides of ``patches`` patches, ``k`` prototypes of ``dim``."""

    n_slides: int
    dim: int = 128
    k: int = 8
    patches: int = 10
    seed: int = 0
    segments: int = 1


class SyntheticCollection:
    """Every vector and table row of ``spec``'s collection, generated at once (seeded), written in any slices."""

    def __init__(self, spec: SyntheticSpec, root: Path):
        rng = np.random.default_rng(spec.seed)
        n, d, k, p = spec.n_slides, spec.dim, spec.k, spec.patches
        self.spec = spec
        self.protos = l2_normalize(rng.standard_normal((k, d)))
        centres = l2_normalize(self.protos[:, None] + 0.8 * l2_normalize(rng.standard_normal((k, CENTRES_PER_PROTOTYPE, d))))
        alpha = 0.3 + 3 * rng.dirichlet(np.full(k, 0.5), size=N_LABELS)  # each label prefers a few prototypes
        label_centre = rng.integers(CENTRES_PER_PROTOTYPE, size=(N_LABELS, k))
        self.labels = rng.integers(N_LABELS, size=n)
        mass = rng.gamma(alpha[self.labels])
        self.mass = (mass / mass.sum(axis=1, keepdims=True)).astype(np.float32)
        self.sub = np.empty((n, k, d), np.float32)
        self.patches = np.empty((n * p, d), np.float32)
        self.patch_proto = np.empty(n * p, np.int32)
        for s in range(0, n, CHUNK):
            e = min(n, s + CHUNK)
            own = np.where(rng.random((e - s, k)) < 0.5, label_centre[self.labels[s:e]],
                           rng.integers(CENTRES_PER_PROTOTYPE, size=(e - s, k)))
            self.sub[s:e] = l2_normalize(centres[np.arange(k), own] + 0.5 * rng.standard_normal((e - s, k, d)) / np.sqrt(d))
            cdf = np.cumsum(self.mass[s:e], axis=1)
            draw = (rng.random((e - s, p, 1)) > cdf[:, None, :-1]).sum(axis=2)  # patch prototype ~ Categorical(π)
            self.patch_proto[s * p:e * p] = draw.ravel()
            own_sub = np.take_along_axis(self.sub[s:e], draw[..., None], axis=1)  # (slides, p, d)
            self.patches[s * p:e * p] = l2_normalize(own_sub + 0.8 * rng.standard_normal(own_sub.shape) / np.sqrt(d)).reshape(-1, d)
        self.slide_vecs = l2_normalize((np.sqrt(self.mass)[..., None] * self.sub).reshape(n, k * d))
        self.mean_vecs = l2_normalize(self.patches.reshape(n, p, d).mean(axis=1))
        self.entropy = -(self.mass * np.log(np.maximum(self.mass, 1e-12))).sum(axis=1) / np.log(k)
        self.settings = IndexSettings(encoder={"name": "synthetic", "weights_sha256": "synthetic", "dim": d},
                                      bank={"name": "synthetic", "K": k, "sha256": "synthetic",
                                            "source": str(Path(root) / "no-bank.yaml")})
        grid = np.arange(p)
        self.coords = np.stack([(grid % 4) * 448, (grid // 4) * 448], axis=1)

    def create(self, writer: IndexWriter) -> None:
        """Fix the identity and prototypes of a new index and commit every slide's metadata."""
        n, k = self.spec.n_slides, self.spec.k
        names = [f"prototype {i}" for i in range(k)]
        writer.set_identity(self.settings)
        writer.fix_prototypes(pa.table({"proto_id": pa.array(range(k), pa.int32()), "name": names,
                                        "descriptions": [[t] for t in names]}), self.protos)
        writer.update_metadata(pa.table({"slide_id": [f"S{r:06d}" for r in range(n)],
                                         "label": [f"c{c}" for c in self.labels],
                                         "patient_id": [f"P{r // 2:06d}" for r in range(n)], "stain": ["H&E"] * n}))

    def rows_of(self, record: dict) -> SlideRows:
        r, p = int(record["slide_id"][1:]), self.spec.patches
        sl = slice(r * p, (r + 1) * p)
        return SlideRows(record, self.coords, self.patches[sl].astype(np.float16), self.patch_proto[sl],
                         (self.patches[sl] * self.protos[self.patch_proto[sl]]).sum(axis=1), self.slide_vecs[r],
                         self.mean_vecs[r], self.sub[r], self.mass[r])

    def append(self, writer: IndexWriter, lo: int, hi: int, flat: bool = False) -> None:
        """Commit slides ``lo`` … ``hi - 1`` as one segment (``flat``: exact FAISS indexes, no quantizer)."""
        p = self.spec.patches
        records = [{"slide_id": f"S{r:06d}", "path": f"/synthetic/S{r:06d}.svs", "vendor": "synthetic",
                    "width": 4096, "height": 4096, "mpp": 0.25, "mpp_source": "synthetic", "magnification": 40.0,
                    "n_patches": p, "patch_size": 448, "status": "ok", "fingerprint": "synthetic",
                    "entropy": float(self.entropy[r]), "max_mass": float(self.mass[r].max())} for r in range(lo, hi)]
        writer.append_segment(records, self.rows_of, (self.spec.k, self.spec.dim), faiss_kind="flat" if flat else None)


def synthetic_index(root: Path, spec: SyntheticSpec, flat: bool = False) -> dict:
    """Write an index directory for ``spec`` under ``root`` (reused when already complete); returns its manifest.

    The slides go through the store's own writer as ``spec.segments`` commits of equal size (one segment each).
    ``flat`` forces exact Flat FAISS indexes instead of ``choose_index``'s choice.
    """
    if (root / "CURRENT").is_file():
        return Snapshot(root).manifest()
    data = SyntheticCollection(spec, root)
    timings = {}
    with IndexWriter(root, create=True) as writer:
        data.create(writer)
        bounds = np.linspace(0, spec.n_slides, spec.segments + 1).astype(int)
        start = time.perf_counter()
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            data.append(writer, lo, hi, flat)
        timings["write"] = round(time.perf_counter() - start, 1)
    return Snapshot(root).manifest() | {"timings": timings}
