"""Adding one slide to an index of N slides: wall time and peak RSS of the whole `slidesearch index` process,
store version 2 against version 1 (a checkout of the last version 1 commit), paired in one run.

Usage: python benchmarks/incremental.py [--sizes 100,1000,10000] [--patches 1000] [--repeats 3]
       [--v1-tree DIR] [--keep DIR] [--out out/bench-incremental]

Each base index holds N slides of ``--patches`` synthetic 128-d features (the dimension of ``tiny``, whose
prototypes they are aggregated with): version 2 gets them through the store's writer in segments of at most
2,000 slides (exact FAISS indexes, so building the base stays quick); version 1 gets them as its staged
per-slide files, which its every run re-aggregates and rebuilds. The slide added is a synthetic 3,136² slide
(49 patches at 20x), encoded with ``tiny``; each repeat adds another such slide, alternating v2 and v1 runs.
``--v1-tree`` is made with ``git worktree add DIR 069ff98`` (the last version 1 commit).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEGMENT_SLIDES = 2000
RUN = "import sys; sys.path.insert(0, sys.argv.pop(1)); from retrieval.cli import main; sys.argv[0] = 'slidesearch'; main()"
# Linux keeps a process's peak RSS across fork and exec, so a command started by this (large) process would
# report at least this process's peak: a small launcher starts it and reports its own child's wait4 figures.
LAUNCH = """import json, os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = proc.stderr.read().decode()
_, status, usage = os.wait4(proc.pid, 0)
print(json.dumps({"wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_mb": usage.ru_maxrss / 1024,
                  "code": os.waitstatus_to_exitcode(status), "err": err[-400:]}))
"""


def synthetic_features(slide_id: str, n: int, prototypes: np.ndarray) -> np.ndarray:
    """Unit float16 features near a few of the prototypes (deterministic per slide)."""
    rng = np.random.default_rng(zlib.crc32(slide_id.encode()))
    centres = prototypes[rng.integers(len(prototypes), size=n)]
    x = centres + 1.5 * rng.standard_normal(centres.shape).astype(np.float32) / np.sqrt(centres.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def record(slide_id: str, n: int) -> dict:
    return {"slide_id": slide_id, "path": f"/synthetic/{slide_id}.svs", "sha256": f"{zlib.crc32(slide_id.encode()):064x}",
            "size_bytes": n, "mtime_ns": 1, "vendor": "synthetic", "width": 32 * 448, "height": 32 * 448, "mpp": 0.25,
            "mpp_source": "synthetic", "magnification": 40.0, "status": "ok", "error": None, "level": 0}


def build_v2(root: Path, n_slides: int, patches: int) -> float:
    """A version 2 base index of synthetic slides, written through the store's writer (resumed where an
    earlier, interrupted build stopped); returns seconds."""
    from indexer.aggregate import aggregate_slide
    from indexer.bank import load_bank
    from indexer.encoders import load_encoder
    from indexer.pipeline import IndexConfig, prototype_table, settings_for
    from indexer.prototypes import embed_prototypes
    from indexer.store.segments import SlideRows
    from indexer.store.writer import IndexWriter

    start = time.perf_counter()
    encoder, bank = load_encoder("tiny", device="cpu"), load_bank("general")
    settings = settings_for(IndexConfig(), encoder, bank)
    text = embed_prototypes(bank, encoder)
    coords = np.stack([np.arange(patches) % 32 * 448, np.arange(patches) // 32 * 448], axis=1)
    with IndexWriter(root, create=True) as writer:
        writer.set_identity(settings)
        prototypes = writer.fix_prototypes(prototype_table(bank, text), text)

        def rows_of(rec):
            feats = synthetic_features(rec["slide_id"], patches, prototypes)
            emb = aggregate_slide(feats.astype(np.float32), prototypes, settings.aggregation)
            rec.update(entropy=float(emb.entropy), max_mass=float(emb.max_mass))
            return SlideRows(rec, coords, feats, emb.patch_proto, emb.patch_proto_sim, emb.slide_vector,
                             emb.mean_vector, emb.subvectors, emb.mass)

        done = sum(s.startswith("B") for s in writer.live_slides)
        for lo in range(done, n_slides, SEGMENT_SLIDES):
            records = [{**record(f"B{i:06d}", patches), "n_patches": patches, "patch_size": 448,
                        "fingerprint": settings.fingerprint(None)} for i in range(lo, min(n_slides, lo + SEGMENT_SLIDES))]
            writer.append_segment(records, rows_of, prototypes.shape, faiss_kind="flat")
    return time.perf_counter() - start


def build_v1(root: Path, n_slides: int, patches: int) -> float:
    """A version 1 base: its staged per-slide ``features/<id>.npz`` files (what every v1 run rebuilds from)."""
    from indexer.bank import load_bank
    from indexer.encoders import load_encoder
    from indexer.prototypes import embed_prototypes

    start = time.perf_counter()
    prototypes = embed_prototypes(load_bank("general"), load_encoder("tiny", device="cpu"))
    coords = np.stack([np.arange(patches) % 32 * 448, np.arange(patches) // 32 * 448], axis=1).astype(np.int64)
    folder = root / "features"
    folder.mkdir(parents=True)
    for i in range(n_slides):
        slide_id = f"B{i:06d}"
        with open(folder / f"{slide_id}.npz", "wb") as fh:
            np.savez(fh, coords=coords, features=synthetic_features(slide_id, patches, prototypes),
                     patch_size=np.int64(448), record=np.frombuffer(json.dumps(record(slide_id, patches)).encode(), np.uint8))
    return time.perf_counter() - start


def new_slides(folder: Path, count: int) -> list[Path]:
    """Slides to add, with ids no earlier run of the benchmark used (bases are reused with --keep)."""
    from indexer.synthetic import Region, SyntheticSlideSpec, write_slide

    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d%H%M%S")
    return [write_slide(folder / f"NEW{stamp}-{i:02d}.tif", SyntheticSlideSpec(
        3136, 3136, (Region(0, 0, 3136, 3136, "tumour"),), mpp=0.25, seed=100 + i)) for i in range(count)]


def timed(tree: Path, args: list[str]) -> dict:
    """Wall seconds and peak RSS (from wait4, through a small launcher) of ``slidesearch ARGS`` run from ``tree``."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = subprocess.run([sys.executable, "-c", LAUNCH, sys.executable, "-c", RUN, str(tree), *args], env=env,
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result.pop("code") != 0:
        raise RuntimeError(f"slidesearch {' '.join(args)} failed: {result['err']}")
    result.pop("err")
    return result


def run(sizes, patches, repeats, v1_tree, work: Path, v1_repeats: int | None = None) -> dict:
    v1_repeats = repeats if v1_repeats is None else v1_repeats
    slides = new_slides(work / "new", repeats * 2 * len(sizes))
    rows, bases = [], {}
    for n in sizes:  # every base first, then the adds, round-robin over N, so drift in load hits every N alike
        bases[n] = {"v2": work / f"v2_n{n}", "v1": work / f"v1_n{n}"}
        built = {"v2": build_v2(bases[n]["v2"], n, patches)}
        if v1_tree and not (bases[n]["v1"] / "features").is_dir():
            built["v1"] = build_v1(bases[n]["v1"], n, patches)
        print(f"N={n}: bases ready {built}", file=sys.stderr, flush=True)
    for rep in range(repeats):
        for n in sizes:
            for store in ("v2", "v1") if v1_tree and rep < v1_repeats else ("v2",):
                tree = ROOT if store == "v2" else Path(v1_tree)
                slide = slides[len(sizes) * 2 * rep + 2 * sizes.index(n) + (store == "v1")]
                args = ["index", str(slide), "--out", str(bases[n][store]), "--model", "tiny", "--quiet"]
                try:
                    rows.append({"store": store, "n_slides": n, "repeat": rep, **timed(tree, args)})
                except (RuntimeError, subprocess.CalledProcessError) as exc:  # e.g. killed for memory
                    rows.append({"store": store, "n_slides": n, "repeat": rep, "error": str(exc)[-300:]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows, "medians": medians(rows)}


def medians(rows: list[dict]) -> list[dict]:
    out = []
    for store in sorted({r["store"] for r in rows}, reverse=True):
        for n in sorted({r["n_slides"] for r in rows}):
            cell = [r for r in rows if r["store"] == store and r["n_slides"] == n and "error" not in r]
            if cell:
                out.append({"store": store, "n_slides": n, "runs": len(cell),
                            "wall_s": float(np.median([r["wall_s"] for r in cell])),
                            "cpu_s": float(np.median([r.get("cpu_s", np.nan) for r in cell])),
                            "peak_rss_mb": float(np.median([r["peak_rss_mb"] for r in cell]))})
    return out


def markdown(result: dict) -> str:
    m = result["medians"]
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']}", "",
             f"{result['patches']} patches per base slide; medians of {result['repeats']} runs per cell.", "",
             "| store | N slides | runs | add one slide: wall s | CPU s (user + sys) | peak RSS MB |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['store']} | {r['n_slides']:,} | {r['runs']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
              f"| {r['peak_rss_mb']:.0f} |" for r in m]
    lines += [f"| {r['store']} | {r['n_slides']:,} | failed | {r['error']} | | |" for r in result["rows"] if "error" in r]
    v2 = {r["n_slides"]: r for r in m if r["store"] == "v2"}
    if len(v2) > 1:
        lo, hi = min(v2), max(v2)
        lines += ["", f"v2 at N={hi:,} against N={lo:,}: wall time {v2[hi]['wall_s'] / v2[lo]['wall_s']:.2f}×, "
                  f"CPU time {v2[hi]['cpu_s'] / v2[lo]['cpu_s']:.2f}×, peak RSS {v2[hi]['peak_rss_mb'] / v2[lo]['peak_rss_mb']:.2f}×."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for store in ("v2", "v1"):
        cells = [r for r in result["medians"] if r["store"] == store]
        if cells:
            n = [r["n_slides"] for r in cells]
            axes[0].plot(n, [r["wall_s"] for r in cells], "o-", label=f"store {store}")
            axes[1].plot(n, [r["peak_rss_mb"] / 1024 for r in cells], "o-", label=f"store {store}")
    for ax, label in zip(axes, ("add one slide: wall s", "peak RSS GB")):
        ax.set_xscale("log")
        ax.set_xlabel("slides in the index (× 1,000 patches)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    from retrieval.bench_search import machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="slides in the base indexes")
    parser.add_argument("--patches", type=int, default=1000, help="patches per base slide")
    parser.add_argument("--repeats", type=int, default=3, help="slides added per (store, N)")
    parser.add_argument("--v1-repeats", type=int, default=None, help="slides added per N to the v1 baseline")
    parser.add_argument("--v1-tree", default=None, help="a checkout of the last version 1 commit (baseline)")
    parser.add_argument("--keep", default=None, help="folder to keep (and reuse) the base indexes in")
    parser.add_argument("--out", default="out/bench-incremental", help="folder for the JSON, Markdown and PNG")
    args = parser.parse_args(argv)
    import tempfile

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_incremental_"))
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    result = run(sizes, args.patches, args.repeats, args.v1_tree, work, args.v1_repeats)
    result.update(command="python benchmarks/incremental.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                  machine=machine_description(), patches=args.patches, repeats=args.repeats)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_incremental.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench_incremental.md").write_text(markdown(result))
    plot(result, out / "bench_incremental.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
