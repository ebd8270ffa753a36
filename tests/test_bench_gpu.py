"""benchmarks/gpu.py's CPU-side logic: options, the one-line refusal without CUDA, the steps' evidence and the
detector that fails any step that ran on the CPU, and the report (no GPU needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu as gpu_benchmark
from gpu_standin import StandInGpu
from indexer.models import devices
from indexer.vectors import device as fd
from indexer.models.devices import TorchProbe
from indexer.models.openclip import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpu():
    return gpu_benchmark


@pytest.fixture(autouse=True)
def auto_device(monkeypatch):
    monkeypatch.delenv(fd.DEVICE_ENV, raising=False)
    monkeypatch.setattr(devices, "system_gpus", lambda: [])


def test_options_and_quick_sizes(gpu):
    full = gpu.parse_args([])
    assert full.batch_sizes == [64, 128, 256, 512] and full.precisions == ["fp16", "bf16"]
    assert full.faiss_sizes == [100_000, 1_000_000] and full.slides == 8
    quick = gpu.parse_args(["--quick", "--slides", "3"])
    assert quick.batch_sizes == [64, 256] and quick.precisions == ["bf16"] and quick.faiss_sizes == [100_000]
    assert quick.slides == 3  # an explicit option wins over --quick
    assert set(gpu.MODELS) == {"ViT-B/16", "CONCH-sized (ViT-B/16 at 448 px)"}
    assert gpu.model_config("ViT-B-16", 448)["vision_cfg"]["image_size"] == 448


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here: the command would run")
def test_refuses_in_one_line_without_cuda(tmp_path):
    out = tmp_path / "gpu"
    result = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--quick", "--out", str(out)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: benchmarks/gpu.py needs a CUDA GPU: torch cannot use")
    assert not out.exists()


def test_what_counts_as_a_usable_gpu(gpu):
    h100 = TorchProbe(True, 1, ("NVIDIA H100 80GB HBM3",))
    assert gpu.cuda_problem(h100, faiss_gpus=1) is None
    assert "FAISS sees no GPU" in gpu.cuda_problem(h100, faiss_gpus=0)
    broken = TorchProbe(False, error="CUDA initialization: CUDA driver version is insufficient")
    assert "driver version is insufficient" in gpu.cuda_problem(broken, faiss_gpus=1)


def test_every_step_run_on_the_cpu_is_caught(gpu, tmp_path):
    """The real steps at toy sizes on this CPU: their evidence shows the CPU and the detector names each one."""
    tiny = {"tiny": (TINY_CONFIG, 64)}
    result = {"encode": gpu.encode_step(tiny, ["bf16"], [8, 16], 32, "cpu"),
              "faiss": gpu.faiss_step([10_000], 32, 50),
              "index": gpu.index_step("tiny", None, "cpu", 1, 1024, 0, 16, tmp_path)}
    assert [r["batch_size"] for r in result["encode"]] == [8, 16] and all(r["patches_per_s"] > 0 for r in result["encode"])
    assert {(r["kind"], r["device"]) for r in result["faiss"]} == {(k, d) for k in ("flat", "ivf_pq") for d in ("gpu", "cpu")}
    assert result["index"]["patches"] > 0 and result["index"]["devices"] == {"encoder": "cpu, fp32", "faiss": "cpu"}
    problems = gpu.ran_on_cpu(result)
    assert sum("encode tiny bf16" in p for p in problems) == 2
    assert sum("searched on the CPU" in p for p in problems) == 2
    assert any(p.startswith("index: the run reports encoder 'cpu, fp32'") for p in problems)
    result["provenance"] = {"command": "python -m benchmarks.gpu", "commit": "abc", "machine": "test", "date": "today",
                            "load_avg_1min": 0.0}
    result["problems"] = problems
    gpu.write_report(result, tmp_path / "report")
    text = (tmp_path / "report" / "bench_gpu.md").read_text()
    assert "**FAILED: steps ran on the CPU" in text and "| tiny | bf16 | 8 |" in text
    assert json.loads((tmp_path / "report" / "bench_gpu.json").read_text())["problems"] == problems


def test_gpu_faiss_rows_pass_when_the_indexes_are_gpu_ones_and_recall_matches(gpu):
    with fd.use_gpu_backend(StandInGpu()):
        rows = gpu.faiss_step([10_000], 32, 50)
    assert all(r["evidence"]["gpu_index"] for r in rows if r["device"] == "gpu")
    assert gpu.ran_on_cpu({"faiss": rows}) == []  # the same recall on both devices: parity holds
    gpu_pq = next(r for r in rows if r["device"] == "gpu" and r["kind"] == "ivf_pq")
    gpu_pq["recall_at_10"] -= 2 * gpu.PARITY
    assert [p for p in gpu.ran_on_cpu({"faiss": rows}) if "parity" in p]
    clean = {"encode": [{"model": "ViT-B/16", "precision": "bf16", "batch_size": 256, "patches_per_s": 2000.0,
                         "peak_gpu_mb": 900.0, "evidence": {"device": "cuda", "weights_on": "cuda"}}],
             "index": {"devices": {"encoder": "cuda:0 (NVIDIA H100), bf16 autocast", "faiss": "gpu:0 (...)"}}}
    assert gpu.ran_on_cpu(clean) == []
