"""Registry of vision-language encoders (open_clip factory style) and their shared interface."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, Union

import numpy as np

from indexer.models.devices import check_precision, default_precision, resolve_device
from indexer.errors import DeviceError, ModelError

if TYPE_CHECKING:  # heavy imports stay lazy so `slidesearch --help` is instant
    import torch
    from PIL import Image

RANDOM_WEIGHTS = "random"  # checkpoint value that explicitly asks for random initialisation
_BACKEND_MODULES = ("indexer.models.openclip", "indexer.models.backends")


def random_weights(encoder: dict) -> bool:
    """Whether an index's encoder record (``index.json``'s ``encoder``) names random weights: ``tiny``, or a
    ``--checkpoint random`` model. Its text tower then carries no meaning.

    >>> random_weights({"name": "tiny"}), random_weights({"name": "conch", "checkpoint": "/w/conch.bin"})
    (True, False)
    """
    return encoder.get("name") == "tiny" or encoder.get("checkpoint") == RANDOM_WEIGHTS


@dataclass(frozen=True)
class EncoderInfo:
    """What `slidesearch models` shows about one registered encoder."""

    name: str
    dim: int
    description: str
    available: bool
    how_to_obtain: str
    status: str = ""  # why it is (not) available, e.g. "optional package missing"


Factory = Callable[..., "Encoder"]
InfoSource = Union[EncoderInfo, Callable[[], EncoderInfo]]
_REGISTRY: dict[str, tuple[Factory, InfoSource]] = {}


class Encoder:
    """One image tower + text tower mapping into a shared, L2-normalised embedding space.

    Subclasses set the attributes in ``__init__`` and implement ``_image_features`` and
    ``_text_features`` (raw features on ``self.device``); batching, device placement,
    autocast (``precision``: bf16 on CUDA and fp32 on the CPU unless set), ``inference_mode`` and normalisation
    live here once.
    """

    name: str
    dim: int
    image_size: int
    weights_sha256: str
    device: str
    batch_size: int
    checkpoint: str | None
    preprocess: Callable[["Image.Image"], "torch.Tensor"]  # picklable: DataLoader workers use it
    preprocess_summary: dict[str, Any]
    precision: str | None = None  # fp32, bf16 or fp16 autocast; None: the device's default

    def _image_features(self, pixels: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def _text_features(self, texts: Sequence[str]) -> "torch.Tensor":
        raise NotImplementedError

    def encode_images(self, images: "torch.Tensor | Sequence[Image.Image]") -> np.ndarray:
        """Embed images.

        Args:
            images: a preprocessed batch (N, 3, H, W) or a list of PIL images.

        Returns:
            (N, dim) float32, each row L2-normalised.
        """
        import torch

        if not isinstance(images, torch.Tensor):
            images = [self.preprocess(img) for img in images]
            if not images:
                return np.zeros((0, self.dim), np.float32)
            images = torch.stack(images)
        chunks = [images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size)]
        return self._run(lambda chunk: self._image_features(chunk.to(self.device, non_blocking=True)), chunks)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the text tower: (N, dim) float32, each row L2-normalised."""
        texts = list(texts)
        chunks = [texts[i : i + self.batch_size] for i in range(0, len(texts), self.batch_size)]
        return self._run(self._text_features, chunks)

    def _run(self, features: Callable[[Any], "torch.Tensor"], chunks: list) -> np.ndarray:
        import torch

        out = [np.zeros((0, self.dim), np.float32)]
        precision = check_precision(self.precision or default_precision(self.device))
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        with torch.inference_mode(), torch.autocast(kind, dtype=dtype, enabled=precision != "fp32"):
            for chunk in chunks:
                feats = torch.nn.functional.normalize(features(chunk).float(), dim=-1)
                out.append(feats.cpu().numpy().astype(np.float32, copy=False))
        return np.concatenate(out)

    def describe(self) -> dict[str, Any]:
        """The encoder section of manifest.json."""
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "dim": self.dim,
            "image_size": self.image_size,
            "preprocess": self.preprocess_summary,
            "checkpoint": self.checkpoint,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, device={self.device!r})"


def register_encoder(name_or_prefix: str, factory: Factory | None = None, info: InfoSource | None = None):
    """Register an encoder factory under a name (``tiny``) or a prefix ending in ':' (``openclip:``).

    The factory is called as ``factory(spec, checkpoint=..., device=..., batch_size=...)`` where
    ``spec`` is the full name for plain names and the part after the prefix for prefixes.
    Usable as a function or, with ``factory`` omitted, as a decorator.
    """
    if info is None:
        raise ValueError("register_encoder needs an EncoderInfo (or a callable returning one)")

    def add(fn: Factory) -> Factory:
        _REGISTRY[name_or_prefix] = (fn, info)
        return fn

    return add if factory is None else add(factory)


def _load_builtin_backends() -> None:
    for module in _BACKEND_MODULES:
        importlib.import_module(module)


def known_names() -> list[str]:
    """Registered names, prefixes shown as ``prefix<arch>``."""
    _load_builtin_backends()
    return [key + "<arch>" if key.endswith(":") else key for key in _REGISTRY]


def load_encoder(name: str, checkpoint: str | None = None, device: str = "auto", batch_size: int = 64,
                 precision: str | None = None) -> Encoder:
    """Build a registered encoder.

    Args:
        name: ``tiny``, ``openclip:<arch>[@<pretrained tag>]``, ``quiltnet-b32``, ``quiltnet-b16``,
            ``conch``, ``plip``, or any name added with :func:`register_encoder`.
        checkpoint: a local weights file or folder; ``"random"`` for explicit random weights.
        device: ``auto`` (CUDA when usable), ``cpu`` or ``cuda[:N]`` (:func:`indexer.models.devices.resolve_device`).
        batch_size: images or texts per forward pass.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast (None: bf16 on CUDA, fp32 on the CPU).

    Raises:
        ModelError: unknown name, missing checkpoint, wrong architecture, missing optional extra.
        DeviceError: a device that cannot be used, or a GPU present that ``auto`` cannot use.
    """
    _load_builtin_backends()
    if name in _REGISTRY and not name.endswith(":"):
        factory, spec = _REGISTRY[name][0], name
    else:
        prefix = next((p for p in _REGISTRY if p.endswith(":") and name.startswith(p) and len(name) > len(p)), None)
        if prefix is None:
            raise ModelError(f"unknown model '{name}'; known models: {', '.join(known_names())}")
        factory, spec = _REGISTRY[prefix][0], name[len(prefix) :]
    if batch_size < 1:
        raise ModelError(f"batch size must be at least 1, got {batch_size}")
    if checkpoint is not None and checkpoint != RANDOM_WEIGHTS and not Path(checkpoint).exists():
        raise ModelError(f"checkpoint not found: {checkpoint}")
    precision = None if precision is None else check_precision(precision)
    where = resolve_device(device)
    try:
        encoder = factory(spec, checkpoint=checkpoint, device=where, batch_size=batch_size)
    except RuntimeError as exc:  # e.g. CUDA out of memory, a CUDA error: one line, never a CPU fallback
        if not where.startswith("cuda"):
            raise
        raise DeviceError(f"cannot load {name} onto {where} ({first_line(exc)}); free the GPU or pass --device cpu") \
            from None
    if precision is not None:
        encoder.precision = precision
    return encoder


def list_encoders() -> list[EncoderInfo]:
    """Every registered encoder with its size and whether its weights can be used here."""
    _load_builtin_backends()
    return [info() if callable(info) else info for _, info in _REGISTRY.values()]



def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, or of every file in a folder (relative names included), hex."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(module: "torch.nn.Module") -> str:
    """sha256 over a module's state-dict names, shapes, dtypes and bytes (for random-init weights)."""
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy())  # buffer, no copy
    return digest.hexdigest()


def require_module(module: str, extra: str) -> Any:
    """Import an optional dependency or raise a one-line ModelError naming the extra to install."""
    try:
        with warnings.catch_warnings():  # import-time deprecation notices of third-party packages are noise here
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            f"this encoder needs the optional package for '{extra}' ({exc.name or module} is missing); "
            f"install it with: pip install 'slidesearch[{extra}]'"
        ) from None


def module_available(module: str) -> bool:
    """Whether an optional dependency can be imported, without importing it."""
    return importlib.util.find_spec(module) is not None


def check_checkpoint_fits(expected: Mapping[str, Any], found: Mapping[str, Any], path: str | Path, arch: str) -> None:
    """Raise a one-line ModelError when a state dict does not fit the expected architecture.

    Args:
        expected: the model's own state dict (or any mapping of names to tensors/shapes).
        found: the checkpoint's state dict.
        path: the checkpoint, for the message.
        arch: the expected architecture's name, for the message.
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong_shape = [k for k in expected if k in found and _shape(found[k]) != _shape(expected[k])]
    if not (missing or unexpected or wrong_shape):
        return
    parts = [f"{len(missing)} missing keys", f"{len(unexpected)} unexpected keys"]
    if wrong_shape:
        shown = ", ".join(wrong_shape[:3]) + (", ..." if len(wrong_shape) > 3 else "")
        parts.append(f"{len(wrong_shape)} tensors of the wrong shape ({shown})")
    raise ModelError(
        f"checkpoint {path} does not fit the expected architecture {arch} "
        f"({len(expected)} tensors): " + ", ".join(parts)
    )


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message, for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__
