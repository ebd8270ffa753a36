"""Import patch features extracted elsewhere, in the TRIDENT / CLAM `.h5` layout (one file per slide)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.errors import UserError

# TRIDENT writes `patch_size_level0`; CLAM writes `patch_size` together with `patch_level`.
_PATCH_SIZE_ATTRS = ("patch_size_level0", "patch_size")


def find_features_file(features_dir: str | Path, slide_id: str) -> Path:
    """The ``<slide_id>.h5`` file in ``features_dir`` (TRIDENT names files by slide stem)."""
    path = Path(features_dir) / f"{slide_id}.h5"
    if not path.is_file():
        raise UserError(f"no features file {path} for slide {slide_id}")
    return path


def read_features_h5(path: str | Path, expected_dim: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Read ``features`` (n, d) and ``coords`` (n, 2) from a TRIDENT/CLAM file.

    Args:
        path: the ``.h5`` file.
        expected_dim: the embedding size of the encoder the user says the features came from.

    Returns:
        (coords int64 level-0 top-left corners, L2-normalised float32 features, level-0 patch size
        when the file records it, else None).
    """
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5 or "coords" not in h5:
                raise UserError(f"{path}: expected datasets 'features' and 'coords' (TRIDENT/CLAM layout)")
            features = np.asarray(h5["features"], dtype=np.float32)
            coords = np.asarray(h5["coords"])
            size = next((int(h5["coords"].attrs[a]) for a in _PATCH_SIZE_ATTRS if a in h5["coords"].attrs), None)
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc})") from None
    features = features.reshape(len(features), -1) if features.ndim == 3 else features
    if features.ndim != 2 or features.shape[1] != expected_dim:
        raise UserError(
            f"{path}: features have shape {features.shape}, but the encoder named for them has dimension "
            f"{expected_dim}; pass the --model the features were extracted with"
        )
    if coords.shape != (len(features), 2):
        raise UserError(f"{path}: coords shape {coords.shape} does not match {len(features)} feature rows")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return coords.astype(np.int64), features / np.maximum(norms, 1e-12), size
