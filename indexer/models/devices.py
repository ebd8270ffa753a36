"""Where the encoder runs: an explicit device is checked, and ``auto`` never hides a GPU that is present but fails.

``auto`` is CUDA when torch can use a GPU, the CPU when the machine has none. A machine that has a GPU (the
NVIDIA driver lists one, or CUDA failed to initialise) that torch cannot use is an error naming the cause and
``--device cpu``, so a GPU box never encodes on its CPU at a hundredth of the speed without saying so. FAISS's
device follows the same rule (:func:`indexer.vectors.faiss_device`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import DeviceError
from indexer.settings import gpus_hidden

NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the kernel driver manages
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TorchProbe:
    """What torch reports about CUDA here.

    Attributes:
        available: torch can run on a CUDA GPU. count: GPUs it sees. names: their names.
        built: this torch build has CUDA at all. error: why CUDA failed to initialise ("" when it did not).
    """

    available: bool
    count: int = 0
    names: tuple[str, ...] = ()
    built: bool = True
    error: str = ""


def probe_torch() -> TorchProbe:
    """Ask torch about CUDA, keeping the initialisation warning it emits when a driver is present but unusable."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = bool(torch.cuda.is_available())
    error = next((str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)), "")
    count = torch.cuda.device_count() if available else 0
    names = tuple(torch.cuda.get_device_name(i) for i in range(count))
    return TorchProbe(available, count, names, bool(torch.backends.cuda.is_built()), error)


def system_gpus() -> list[str]:
    """NVIDIA GPUs this machine's driver lists (their model names), unless ``CUDA_VISIBLE_DEVICES`` hides them all.

    Reads ``/proc/driver/nvidia/gpus/*/information``; an empty list on machines without the NVIDIA driver.
    """
    if gpus_hidden():
        return []
    found = []
    for folder in sorted(NVIDIA_GPUS.glob("*")) if NVIDIA_GPUS.is_dir() else []:
        try:
            lines = (folder / "information").read_text().splitlines()
        except OSError:
            lines = []
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model:")), "")
        found.append(model or f"GPU {folder.name}")
    return found


def resolve_device(device: str, probe: TorchProbe | None = None, gpus: list[str] | None = None) -> str:
    """The torch device for ``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``).

    Args:
        probe: torch's CUDA report (default: :func:`probe_torch`). gpus: the machine's GPUs (default:
            :func:`system_gpus`).

    Raises:
        DeviceError: an unknown device; ``cuda`` without a usable GPU; ``auto`` on a machine that has a GPU
            torch cannot use.
    """
    if device != "cpu" and device != "auto" and not device.startswith("cuda"):
        raise DeviceError(f"unknown device '{device}'; use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    probe = probe or probe_torch()
    if probe.available:
        if device == "auto":
            return "cuda"
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= probe.count):
            raise DeviceError(f"--device {device}: torch sees {probe.count} GPU(s) ({', '.join(probe.names)})")
        return device
    why = probe.error or ("this torch build has no CUDA" if not probe.built else "torch sees no CUDA GPU")
    if device.startswith("cuda"):
        raise DeviceError(f"--device {device} asked for a GPU but none is usable ({why}); use --device cpu")
    seen = system_gpus() if gpus is None else gpus
    if seen or probe.error:
        what = ", ".join(seen) if seen else "a CUDA driver"
        raise DeviceError(f"this machine has {what} but torch cannot use it ({why}); fix the CUDA/driver install, "
                          "or pass --device cpu to encode on the CPU knowingly")
    return "cpu"


def default_precision(device: str) -> str:
    """bf16 autocast on CUDA, float32 on the CPU."""
    return "bf16" if device.startswith("cuda") else "fp32"


def check_precision(precision: str) -> str:
    """``precision`` if it is one of fp32, bf16, fp16.

    Raises:
        DeviceError: any other value.
    """
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision '{precision}'; use {', '.join(PRECISIONS)}")
    return precision


def describe_device(device: str, precision: str | None = None) -> str:
    """A one-line label of a torch device, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3), bf16 autocast`` or ``cpu, fp32``."""
    precision = precision or default_precision(device)
    mode = "fp32" if precision == "fp32" else f"{precision} autocast"
    if not device.startswith("cuda"):
        return f"cpu, {mode}"
    import torch

    index = int(device.partition(":")[2] or torch.cuda.current_device())
    return f"cuda:{index} ({torch.cuda.get_device_name(index)}), {mode}"


def encoder_label(encoder) -> str:
    """Where ``encoder`` runs (its device and precision), or what engine holds it when it is remote."""
    device = getattr(encoder, "device", None)
    if device is None:
        return getattr(encoder, "where", "remote encoder actors")
    return describe_device(device, getattr(encoder, "precision", None))
