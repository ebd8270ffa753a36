"""No silent wrong modes: `index` names its encoder, a device that cannot be used is refused in one line, `auto`
never hides a GPU that fails, and `index`/`info` report where the encoder and FAISS ran."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.models import devices
from indexer.vectors import device as fd
from indexer.models.devices import TorchProbe, resolve_device
from indexer.models.encoders import load_encoder
from indexer.errors import DeviceError
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide

FAST = ["--mag", "10", "--patch", "64", "--workers", "0", "--quiet"]
BROKEN_DRIVER = TorchProbe(False, error="CUDA initialization: The NVIDIA driver on your system is too old "
                                        "(found version 11040)")


@pytest.fixture
def folder(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    write_slide(slides / "A.tif", SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, "tumour"),), seed=1))
    return slides


@pytest.fixture(autouse=True)
def no_gpu_here(monkeypatch):
    monkeypatch.delenv(fd.DEVICE_ENV, raising=False)
    monkeypatch.setattr(devices, "system_gpus", lambda: [])


def one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_index_without_a_model_refuses_listing_the_models(run_cli, folder, tmp_path):
    result = run_cli("index", folder, "--out", tmp_path / "idx", *FAST)
    assert result.exit_code == 2
    line = one_line(result)
    assert "--model" in line and all(name in line for name in ("tiny", "conch", "plip", "quiltnet-b32"))
    assert "slidesearch models" in line and not (tmp_path / "idx").exists()


@pytest.mark.parametrize("env, args, expected", [
    ({}, ["--device", "cuda"], "--device cuda"),
    ({fd.DEVICE_ENV: "cuda"}, [], "SLIDESEARCH_FAISS_DEVICE=cuda"),
    ({fd.DEVICE_ENV: "tpu"}, [], "use auto, cpu or cuda"),
])
def test_a_device_that_cannot_be_used_is_refused_in_one_line_before_any_write(
        run_cli, folder, tmp_path, monkeypatch, env, args, expected):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_cli("index", folder, "--out", tmp_path / "idx", "--model", "tiny", *args, *FAST)
    assert result.exit_code == 2 and expected in one_line(result)
    assert not (tmp_path / "idx").exists()


def test_auto_refuses_a_gpu_that_is_present_but_unusable(run_cli, folder, tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "probe_torch", lambda: BROKEN_DRIVER)
    result = run_cli("index", folder, "--out", tmp_path / "idx", "--model", "tiny", *FAST)
    assert result.exit_code == 2
    line = one_line(result)
    assert "driver on your system is too old" in line and "--device cpu" in line
    monkeypatch.setattr(devices, "system_gpus", lambda: ["NVIDIA A100-SXM4-40GB"])  # a torch without CUDA, same
    with pytest.raises(DeviceError, match="NVIDIA A100.*this torch build has no CUDA"):
        resolve_device("auto", TorchProbe(False, built=False))


def test_resolving_devices():
    assert resolve_device("auto", TorchProbe(False), gpus=[]) == "cpu"  # no GPU anywhere: the CPU, quietly
    assert resolve_device("cpu", BROKEN_DRIVER, gpus=["NVIDIA H100"]) == "cpu"  # asked for: fine
    two = TorchProbe(True, 2, ("NVIDIA H100", "NVIDIA H100"))
    assert resolve_device("auto", two) == "cuda" and resolve_device("cuda:1", two) == "cuda:1"
    for bad, message in (("cuda:2", "sees 2 GPU"), ("tpu", "unknown device")):
        with pytest.raises(DeviceError, match=message):
            resolve_device(bad, two)
    with pytest.raises(DeviceError, match="none is usable .*use --device cpu"):
        resolve_device("cuda", TorchProbe(False))


def test_the_driver_s_gpu_list_is_read_and_cuda_visible_devices_can_hide_it(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real system_gpus, on a fake /proc tree
    for i, model in enumerate(("NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3")):
        gpu = tmp_path / f"0000:0{i}:00.0"
        gpu.mkdir()
        (gpu / "information").write_text(f"Model: \t\t {model}\nIRQ:   42\n")
    monkeypatch.setattr(devices, "NVIDIA_GPUS", tmp_path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert devices.system_gpus() == ["NVIDIA H100 80GB HBM3"] * 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.system_gpus() == []
    monkeypatch.setattr(devices, "NVIDIA_GPUS", tmp_path / "absent")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.system_gpus() == []


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_autocast_runs_and_stays_close_to_fp32(precision):
    """The autocast path CUDA takes (bf16 by default), run on the CPU's autocast: float32 unit rows out, close to
    the float32 result but not equal to it (the reduced precision was really used)."""
    images = np.random.default_rng(0).random((16, 3, 64, 64), np.float32)
    import torch

    full = load_encoder("tiny", device="cpu").encode_images(torch.from_numpy(images))
    reduced_encoder = load_encoder("tiny", device="cpu", precision=precision)
    reduced = reduced_encoder.encode_images(torch.from_numpy(images))
    assert reduced.dtype == np.float32 and np.allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    cosine = (full * reduced).sum(axis=1)
    assert cosine.min() > 0.98 and not np.array_equal(full, reduced)
    assert devices.encoder_label(reduced_encoder) == f"cpu, {precision} autocast"
    with pytest.raises(DeviceError, match="unknown precision"):
        load_encoder("tiny", device="cpu", precision="int4")


def test_index_and_info_report_the_devices_used(run_cli, folder, tmp_path):
    out = tmp_path / "idx"
    result = run_cli("index", folder, "--out", out, "--model", "tiny", "--json", *FAST)
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)["devices"]
    assert reported == {"encoder": "cpu, fp32", "faiss": "cpu"}
    info = run_cli("info", out, "--json")
    assert json.loads(info.stdout)["devices"] == reported
    text = run_cli("info", out).stdout
    assert "devices: encoder cpu, fp32; FAISS cpu (the index run that made version 1)" in text
    human = run_cli("index", folder, "--out", tmp_path / "other", "--model", "tiny", *FAST[:-1])
    assert "devices: encoder cpu, fp32; FAISS cpu" in human.stdout
    removed = run_cli("remove", out, "A")
    assert removed.exit_code == 0 and json.loads(run_cli("info", out, "--json").stdout)["devices"] == {}


def test_a_model_that_fails_to_load_on_the_gpu_is_one_line(monkeypatch):
    from indexer.models import encoders

    def factory(spec, *, checkpoint, device, batch_size):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")

    monkeypatch.setitem(encoders._REGISTRY, "oom-test", (factory, encoders.EncoderInfo("oom-test", 1, "", True, "")))
    monkeypatch.setattr(devices, "probe_torch", lambda: TorchProbe(True, 1, ("NVIDIA H100",)))
    with pytest.raises(DeviceError) as failed:
        load_encoder("oom-test", device="cuda")
    assert str(failed.value) == ("cannot load oom-test onto cuda (RuntimeError: CUDA out of memory. Tried to allocate "
                                 "2.00 GiB); free the GPU or pass --device cpu")
    with pytest.raises(RuntimeError, match="CUDA out of memory"):  # on the CPU a failure is not a device problem
        load_encoder("oom-test", device="cpu")
