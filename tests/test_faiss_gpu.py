"""FAISS's GPU paths, run on the CPU through a stand-in backend whose "GPU" indexes are real FAISS indexes
(tests/gpu_standin.py): what moves, what stays, that results equal the CPU path, and that failures are loud."""

from __future__ import annotations


import faiss
import numpy as np
import pytest

from benchmarks import scale as scale_benchmark
from gpu_standin import StandInGpu
from indexer.models import devices
from indexer.vectors import device as fd
from indexer import vectors as vi
from indexer.errors import DeviceError
from indexer.store import quantizer
from indexer.store.reader import Snapshot
from indexer.store.rerank import RerankedIndex, open_index

PLAN = quantizer.QuantizerPlan(nlist=256, nprobe=16)  # trained at 39·256 vectors: 8-bit codes, as a GPU needs
SLIDES, PATCHES, SEGMENT = 75, 200, 25  # 3 segments of 5,000 patches: the second crosses the threshold


def _unit(n, d=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((24, d))
    x = centres[rng.integers(24, size=n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(autouse=True)
def auto_device(monkeypatch):
    monkeypatch.delenv(fd.DEVICE_ENV, raising=False)
    monkeypatch.setattr(devices, "system_gpus", lambda: [])  # whatever this machine has, tests choose


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three segments under one quantizer trained on the CPU with an HNSW coarse quantizer (``IVF32_HNSW32``),
    the kind a GPU cannot take as it is: the first, written exact below the threshold, is back-filled."""
    bench = scale_benchmark
    root = tmp_path_factory.mktemp("gpu") / "index"
    gen = bench.ScaleGenerator(dim=32, k=4, patches=PATCHES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantizer, "PLAN", PLAN)
        bench.write_collection(root, SLIDES, gen, SEGMENT)
    queries = np.stack([gen.patch_draws(int(s), 1, stream=70 + i)[1][0] for i, s in enumerate(range(0, SLIDES, 3))])
    return root, queries.astype(np.float32)


def test_device_choice_follows_the_environment_and_refuses_in_one_line(monkeypatch):
    assert fd.faiss_device() == "cpu"  # auto, no GPU anywhere (the real backend: FAISS sees none here)
    monkeypatch.setenv(fd.DEVICE_ENV, "cuda")
    with pytest.raises(DeviceError) as refused:
        fd.faiss_device()
    message = str(refused.value)
    assert "\n" not in message and "SLIDESEARCH_FAISS_DEVICE=cuda" in message and "cpu" in message
    monkeypatch.setenv(fd.DEVICE_ENV, "sometimes")
    with pytest.raises(DeviceError, match="use auto, cpu or cuda"):
        fd.faiss_device()
    monkeypatch.setenv(fd.DEVICE_ENV, "auto")
    monkeypatch.setattr(devices, "system_gpus", lambda: ["NVIDIA H100 80GB HBM3"])
    with pytest.raises(DeviceError) as hidden:  # a GPU the machine has but FAISS cannot use: never a quiet CPU run
        fd.faiss_device()
    assert "NVIDIA H100" in str(hidden.value) and "SLIDESEARCH_FAISS_DEVICE=cpu" in str(hidden.value)
    with fd.use_gpu_backend(StandInGpu(count=0, gpu_build=False)):  # faiss-cpu cannot see GPUs: auto is the CPU
        assert fd.faiss_device() == "cpu"
    with fd.use_gpu_backend(StandInGpu()):
        assert fd.faiss_device() == "gpu" and fd.gpu_enabled()
        monkeypatch.setenv(fd.DEVICE_ENV, "cpu")  # `cpu` keeps FAISS off a present GPU
        assert fd.faiss_device() == "cpu" and fd.faiss_label() == "cpu"


def test_training_and_adding_on_the_gpu_give_the_cpu_result():
    x, ids = _unit(12_000), np.arange(12_000, dtype=np.int64) * 7 + 1
    choice = vi.IndexChoice("ivf_pq", nlist=16, m=4, nbits=8, nprobe=4)
    cpu = vi.add_to_trained(vi.train_index(x, choice), x, ids)
    gpu = StandInGpu()
    with fd.use_gpu_backend(gpu):
        trained = vi.train_index(x, choice)
        index = vi.add_to_trained(trained, x, ids)
    assert gpu.to_gpu_log == ["IndexIVFPQ", "IndexIVFPQ"] and gpu.to_cpu_log == ["IndexIVFPQ", "IndexIVFPQ"]
    assert not gpu.is_gpu(trained) and not gpu.is_gpu(index)  # results come back to the CPU
    assert faiss.downcast_index(index).nprobe == 4 and index.ntotal == 12_000
    q = _unit(50, seed=5)
    np.testing.assert_array_equal(vi.search(index, q, 10)[1], vi.search(cpu, q, 10)[1])
    with fd.use_gpu_backend(gpu):
        vi.train_index(x, choice, use_gpu=False)  # the caller's `use_gpu=False` keeps it on the CPU
    assert len(gpu.to_gpu_log) == 2


def test_a_failing_gpu_is_an_error_not_a_cpu_fallback(store):
    root, _ = store
    x = _unit(2000)
    choice = vi.IndexChoice("ivf_flat", nlist=16, nprobe=4)
    with fd.use_gpu_backend(StandInGpu(fail="cudaMalloc error out of memory [2]")):
        with pytest.raises(DeviceError) as training:
            vi.train_index(x, choice)
        with pytest.raises(DeviceError) as opening:
            open_index(Snapshot(root), "patches")
    for exc in (training, opening):
        message = str(exc.value)
        assert "\n" not in message and "out of memory" in message and "SLIDESEARCH_FAISS_DEVICE=cpu" in message


def test_searchable_indexes_move_to_the_gpu_with_a_flat_coarse_quantizer(store):
    root, q = store
    snapshot = Snapshot(root)
    cpu = open_index(snapshot, "patches")
    gpu = StandInGpu()
    with fd.use_gpu_backend(gpu):
        moved = open_index(snapshot, "patches")
        assert isinstance(moved, RerankedIndex) and not isinstance(moved.inner, vi.SegmentedIndex)
        assert gpu.is_gpu(moved.inner)  # the three segments, one IVF-PQ index under the shared quantizer
        ivf = faiss.extract_index_ivf(moved.inner)
        assert isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat)  # the GPU copy assigns by brute force
        kept = faiss.extract_index_ivf(cpu.inner)
        assert isinstance(faiss.downcast_index(kept.quantizer), faiss.IndexHNSW)  # the loaded index is unchanged
        scores, found = vi.search(moved, q, 10)
        allowed = np.arange(0, SLIDES * PATCHES, 3)
        f_scores, f_found = vi.search(moved, q, 10, allowed)  # "GPU" indexes take no selector: over-fetch
    exact = q @ snapshot.vectors("patches", np.arange(SLIDES * PATCHES)).T
    kth = np.sort(exact, axis=1)[:, -10]
    assert np.mean(scores >= kth[:, None] - 1e-5) > 0.9  # re-ranked answers, as on the CPU
    np.testing.assert_allclose(scores, vi.search(cpu, q, 10)[0], atol=0.05)
    assert set(f_found.ravel().tolist()) <= set(allowed.tolist()) and (f_found >= 0).all()
    exact_allowed = np.sort(exact[:, allowed], axis=1)[:, -10]
    assert np.mean(f_scores >= exact_allowed[:, None] - 1e-5) > 0.8


def test_an_index_type_without_a_gpu_version_stays_on_the_cpu_and_says_so():
    x, ids = _unit(5000), np.arange(5000)
    hnsw = vi.build_index(x, ids, vi.IndexChoice("hnsw"))
    seven_bit = vi.choice_for_kind("ivf_pq", 5000, 32)  # too few vectors for 256 centroids: 7-bit codes
    assert seven_bit.nbits == 7
    gpu = StandInGpu()
    with fd.use_gpu_backend(gpu):
        assert fd.gpu_implemented(vi.build_index(x, ids, vi.IndexChoice("flat")))
        assert not fd.gpu_implemented(hnsw) and fd.to_gpu(hnsw) is None and gpu.to_gpu_log == []
        small = vi.add_to_trained(vi.train_index(x, seven_bit), x, ids)  # trained and filled on the CPU, no error
        assert not fd.gpu_implemented(small) and gpu.to_gpu_log == [] and small.ntotal == 5000
        assert "Flat and HNSW indexes are built on the CPU" in fd.faiss_label()
