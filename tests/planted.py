"""A test encoder with planted alignment: every synthetic tissue class owns one direction of the space.

Images map to a soft assignment over the classes by their mean colour; a text maps to the directions
of the class names it mentions. So "necrosis" (text), a necrosis patch (image) and the necrosis
prototype all point the same way, and the right answer to every query is known.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from indexer.models.encoders import Encoder, EncoderInfo, register_encoder
from retrieval.demo.synthetic import TISSUE_CLASSES, Region, SyntheticSlideSpec, write_slide

CLASSES = list(TISSUE_CLASSES)
DIM = 16
SHARPNESS = 0.02  # softmax temperature over colour distances


def class_colour(name: str) -> np.ndarray:
    """Mean RGB (0–1) of a tissue class's texture."""
    c = TISSUE_CLASSES[name]
    return np.asarray(c.base) * (1 - c.density) + np.asarray(c.feature) * c.density


class MeanColour:
    """Picklable preprocessing: a small RGB tensor in 0–1."""

    def __call__(self, image):
        array = np.asarray(image.convert("RGB").resize((16, 16)), np.float32) / 255.0
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class PlantedEncoder(Encoder):
    """Planted image and text towers sharing the class directions e_0 … e_5 of a 16-d space."""

    def __init__(self, batch_size: int = 64):
        self.name, self.dim, self.image_size, self.device = "planted", DIM, 16, "cpu"
        self.batch_size, self.checkpoint = batch_size, None
        self.weights_sha256 = hashlib.sha256(b"planted-v1").hexdigest()
        self.preprocess, self.preprocess_summary = MeanColour(), {"size": 16}
        self.colours = torch.tensor(np.stack([class_colour(c) for c in CLASSES]), dtype=torch.float32)

    def _image_features(self, pixels):
        mean = pixels.float().mean(dim=(2, 3))
        weights = torch.softmax(-torch.cdist(mean, self.colours) / SHARPNESS, dim=1)
        out = torch.zeros(len(pixels), DIM)
        out[:, : len(CLASSES)] = weights
        return out

    def _text_features(self, texts):
        rows = []
        for text in texts:
            v = torch.zeros(DIM)
            for i, name in enumerate(CLASSES):
                if name in text.lower():
                    v[i] = 1.0
            if not v.any():  # unrelated text: a fixed direction outside the class subspace
                rng = np.random.default_rng(int(hashlib.sha256(text.encode()).hexdigest()[:8], 16))
                v[len(CLASSES):] = torch.from_numpy(rng.standard_normal(DIM - len(CLASSES)).astype(np.float32))
            rows.append(v)
        return torch.stack(rows)


register_encoder(
    "planted",
    lambda spec, checkpoint=None, device="cpu", batch_size=64: PlantedEncoder(batch_size),
    EncoderInfo("planted", DIM, "test encoder with planted alignment", True, "tests/planted.py"),
)

BANK_YAML = """\
name: planted
description: one prototype per synthetic tissue class
prototypes:
{prototypes}
diseases:
  - name: mucinous carcinoma
    organ: colorectal
    synonyms: [colloid carcinoma]
    attributes: [abundant extracellular mucin, pools of mucin]
"""


def write_planted_bank(path: Path) -> Path:
    """A bank with one prototype per tissue class, described only by that class's name."""
    protos = "\n".join(
        f"  - name: {c}\n    organs: [any]\n    descriptions: [{c}, {c} tissue, a region of {c}]" for c in CLASSES
    )
    path.write_text(BANK_YAML.format(prototypes=protos))
    return path


# Each slide: a dominant class on 3/4 of its area and a minor class on 1/4; no two slides alike.
COHORT = {
    "S01": ("tumour", "stroma", "P1"), "S02": ("tumour", "lymphocytes", "P1"),
    "S03": ("necrosis", "stroma", "P2"), "S04": ("necrosis", "lymphocytes", "P2"),
    "S05": ("mucin", "tumour", "P3"), "S06": ("mucin", "stroma", "P3"),
    "S07": ("lymphocytes", "adipose", "P4"), "S08": ("lymphocytes", "stroma", "P4"),
}
SLIDE_PX = 2048


def write_planted_cohort(folder: Path) -> Path:
    """Eight small slides (3/4 dominant class, 1/4 minor class) and their metadata CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["slide_id,patient_id,label,organ"]
    for i, (slide_id, (major, minor, patient)) in enumerate(COHORT.items()):
        regions = (Region(0, 0, SLIDE_PX, SLIDE_PX * 3 // 4, major), Region(0, SLIDE_PX * 3 // 4, SLIDE_PX, SLIDE_PX, minor))
        write_slide(folder / f"{slide_id}.tiff", SyntheticSlideSpec(SLIDE_PX, SLIDE_PX, regions, mpp=0.25, seed=i))
        lines.append(f"{slide_id},{patient},{major},{'colon' if i < 6 else 'lymph node'}")
    csv = folder / "metadata.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv
