"""Slides of a DICOMweb server: each whole-slide image series under a ``dicomweb+http(s)://`` URL is one slide.

Its slide id is the ContainerIdentifier (0040,0512) its instances carry, else its SeriesInstanceUID; its path is
the series URL (``…/studies/UID/series/UID``, never credentials). Resume compares a sha256 over the series'
instance metadata (SOP instance and class UIDs, frame counts, pixel-matrix sizes) where a file's size, mtime and
sha256 are compared: a series with an instance added, removed or replaced is indexed again.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

from indexer.errors import UserError
from indexer.slides.ids import RULE, check_slide_id
from indexer.slides.dicomweb import (WSI_SOP_CLASS, DicomWebAddress, dicomweb_client, http_problem,
                                     is_dicomweb)

STUDY, SERIES, SOP_CLASS, SOP_INSTANCE = "0020000D", "0020000E", "00080016", "00080018"
MODALITY, CONTAINER, FRAMES = "00080060", "00400512", "00280008"
MATRIX_COLUMNS, MATRIX_ROWS = "00480006", "00480007"
FIELDS = [STUDY, SERIES, SOP_CLASS, SOP_INSTANCE, MODALITY, CONTAINER, FRAMES, MATRIX_COLUMNS, MATRIX_ROWS]
DIGESTED = (SOP_INSTANCE, SOP_CLASS, FRAMES, MATRIX_COLUMNS, MATRIX_ROWS)


class DicomWebSeries(str):
    """The URL of one WSI series (what the index stores as the slide's path), carrying the facts resume compares."""

    facts: dict[str, Any]

    def __new__(cls, url: str, facts: dict[str, Any]) -> "DicomWebSeries":
        series = super().__new__(cls, url)
        series.facts = facts
        return series

    def __reduce__(self):
        return (DicomWebSeries, (str(self), self.facts))


def list_sources(inputs: Iterable[str | Path], list_files: Callable[[list], list[tuple[str, Any]]]
                 ) -> tuple[list[tuple[str, Any]], list[str]]:
    """The ``(slide_id, path)`` pairs of a run's inputs, and notes: DICOMweb URLs are listed here, everything
    else by ``list_files`` (the pipeline's file discovery). A slide id found twice is refused in one line."""
    inputs = list(inputs)
    urls = [item for item in inputs if is_dicomweb(item)]
    files = [item for item in inputs if not is_dicomweb(item)]
    slides = list_files(files) if files or not urls else []
    notes: list[str] = []
    for url in urls:
        found, note = dicomweb_slides(url)
        slides += found
        notes += note
    where = defaultdict(list)
    for slide_id, path in slides:
        where[slide_id].append(str(path))
    for slide_id, paths in where.items():
        if len(paths) > 1:
            raise UserError(f"slide id {slide_id!r} is used by {len(paths)} inputs ({paths[0]}, {paths[1]}); "
                            "slide ids must be unique (narrow a DICOMweb URL to …/studies/UID/series/UID)")
    return slides, notes


def source_facts(path: Any, file_facts: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """What resume compares for ``path``: a DICOMweb series' digest (sha256, no size or mtime), else ``file_facts``."""
    if isinstance(path, DicomWebSeries):
        return dict(path.facts)
    if is_dicomweb(path):
        found, _ = dicomweb_slides(path)
        return dict(found[0][1].facts)
    return file_facts(Path(path))


def dicomweb_slides(url: str) -> tuple[list[tuple[str, DicomWebSeries]], list[str]]:
    """Every WSI series under ``url`` as ``(slide_id, series)``, and notes (series left out and why).

    Raises:
        UserError: malformed URL, unreachable server, 401/403, nothing there, or a named series or study
            that holds no whole-slide image.
    """
    address = DicomWebAddress.parse(url)
    client = dicomweb_client(address)
    try:
        instances = _instances(client, address)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - requests' and dicomweb_client's failures, said in one line
        why = http_problem(exc)
        if why is None:
            raise
        raise UserError(f"{address}: {why}") from None
    by_series: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for instance in instances:
        by_series[(_value(instance, STUDY) or address.study, _value(instance, SERIES) or address.series)].append(instance)
    slides, others, notes = [], Counter(), []
    for (study, series), members in sorted(by_series.items()):
        wsi = [m for m in members if _value(m, SOP_CLASS) == WSI_SOP_CLASS]
        if not wsi:
            others[_value(members[0], MODALITY) or _value(members[0], SOP_CLASS) or "unknown"] += 1
            continue
        slide_id, note = _slide_id(wsi, series)
        notes += note
        facts = {"sha256": _digest(wsi), "size_bytes": None, "mtime_ns": None}
        slides.append((slide_id, DicomWebSeries(DicomWebAddress(address.root, study, series).url(), facts)))
    if not slides:
        what = ", ".join(f"{n} {kind}" for kind, n in sorted(others.items()))
        if address.series:
            raise UserError(f"{address}: is not a whole-slide image series (VL Whole Slide Microscopy, SOP class "
                            f"{WSI_SOP_CLASS}); it holds {what} instances")
        raise UserError(f"{address}: holds no whole-slide image series" + (f" (only {what} series)" if what else ""))
    if others:
        notes.append(f"{address}: left out {sum(others.values())} series that are not whole-slide images "
                     f"({', '.join(f'{n} {kind}' for kind, n in sorted(others.items()))})")
    return slides, notes


def _instances(client, address: DicomWebAddress) -> list[dict]:
    """Instance-level QIDO results (FIELDS) of the series, the study, or every SM series of the server."""
    if address.series:
        found = client.search_for_instances(address.study, address.series, fields=FIELDS, get_remaining=True)
        if not found:
            raise UserError(f"{address}: no such series on the server (or it holds no instances)")
        return found
    if address.study:
        found = client.search_for_instances(address.study, fields=FIELDS, get_remaining=True)
        if not found:
            raise UserError(f"{address}: no such study on the server (or it holds no instances)")
        return found
    series = client.search_for_series(search_filters={MODALITY: "SM"}, fields=[STUDY], get_remaining=True)
    studies = sorted({_value(s, STUDY) for s in series} - {None})
    return [instance for study in studies for instance in
            client.search_for_instances(study, search_filters={MODALITY: "SM"}, fields=FIELDS, get_remaining=True)]


def _slide_id(instances: list[dict], series: str) -> tuple[str, list[str]]:
    """The series' most common ContainerIdentifier when it is a valid slide id, else its SeriesInstanceUID."""
    containers = Counter(str(v).strip() for v in (_value(i, CONTAINER) for i in instances) if v and str(v).strip())
    if not containers:
        return series, []
    container = containers.most_common(1)[0][0]
    try:
        return check_slide_id(container), []
    except UserError:
        return series, [f"series {series}: its ContainerIdentifier {container[:60]!r} breaks the slide-id rule "
                        f"({RULE}); indexed as its SeriesInstanceUID"]


def _digest(instances: list[dict]) -> str:
    """sha256 over the sorted per-instance metadata lines (DIGESTED tags)."""
    lines = sorted("|".join(str(_value(i, tag)) for tag in DIGESTED) for i in instances)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _value(instance: dict, tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON dataset, or None."""
    values = instance.get(tag, {}).get("Value") or [None]
    return values[0]
