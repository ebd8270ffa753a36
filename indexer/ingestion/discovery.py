"""Slide discovery: files and folders (DICOM-WSI folders included) expanded into unique slide inputs."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Iterable

from indexer.errors import UserError
from indexer.slides import slide_id as slide_id_of
from indexer.slides.ids import SLIDE_SUFFIXES


def collect_slides(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (searched recursively) into slide inputs, sorted, without duplicates.

    A folder holding DICOM files (``.dcm``, or no suffix and the DICOM preamble) is one DICOM-WSI slide,
    as is a ``.dcm`` file given by name (its folder is the slide); its slide id is the folder's name.
    """
    from indexer.slides.dicom import dicom_folder, is_dicom_file

    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if not child.is_file():
                    continue
                if is_dicom_file(child):
                    found[child.parent.resolve()] = None
                elif child.suffix.lower() in SLIDE_SUFFIXES:
                    found[child.resolve()] = None
        elif path.exists():
            found[(dicom_folder(path) or path).resolve()] = None
        else:
            raise UserError(f"{path}: no such file or directory")
    if not found:
        raise UserError("no slide files found in the given paths")
    paths = list(found)
    ids = defaultdict(list)
    for p in paths:
        ids[slide_id_of(p)].append(p)
    dupes = {k: v for k, v in ids.items() if len(v) > 1}
    if dupes:
        name, where = next(iter(dupes.items()))
        raise UserError(f"slide id {name!r} is used by {len(where)} files ({where[0]}, {where[1]}); slide file names must be unique")
    return paths
