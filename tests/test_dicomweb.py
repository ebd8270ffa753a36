"""DICOMweb (issue 24): index WSI series straight from a real Orthanc, resume by series, and say what went wrong in
one line. Skipped where Debian's orthanc and orthanc-dicomweb are not installed (scripts/env.sh installs them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from assertions import one_error_line
from conftest import GRID_ALIGNED_REGIONS
from retrieval.demo.synthetic import SyntheticSlideSpec
from retrieval.demo.dicom import write_dicom_slide
from benchmarks.fixtures.orthanc import dicomweb_plugin, orthanc_binary, running_orthanc, running_proxy
from benchmarks.fixtures.clients import free_port

pytestmark = pytest.mark.skipif(orthanc_binary() is None or dicomweb_plugin() is None,
                                reason="Orthanc and its DICOMweb plugin are not installed (apt-get install orthanc "
                                       "orthanc-dicomweb; scripts/env.sh does it as root)")

SPECS = {seed: SyntheticSlideSpec(2048, 1536, GRID_ALIGNED_REGIONS, mpp=0.25, seed=seed) for seed in (4, 5, 6)}
INDEX_ARGS = ("--model", "tiny", "--mag", "10", "--patch", "64", "--workers", "0", "-q", "--json")
REGION = "@448,448,448,448"


def uids(folder: Path) -> dict[str, str]:
    """Study and series UID of a DICOM folder, and the SOPInstanceUID of its smallest level."""
    files = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.iterdir())]
    smallest = min(files, key=lambda d: int(d.TotalPixelMatrixColumns))
    return {"study": files[0].StudyInstanceUID, "series": files[0].SeriesInstanceUID,
            "smallest": smallest.SOPInstanceUID, "level0": max(files, key=lambda d: int(d.TotalPixelMatrixColumns)).SOPInstanceUID}


def without_container(folder: Path, out: Path) -> Path:
    """A copy of a DICOM-WSI folder without ContainerIdentifier (its slide id becomes its SeriesInstanceUID)."""
    out.mkdir(parents=True)
    for file in sorted(folder.iterdir()):
        dataset = pydicom.dcmread(file)
        del dataset.ContainerIdentifier
        dataset.save_as(out / file.name, enforce_file_format=True)
    return out


def secondary_capture(path: Path, study: str | None = None) -> Path:
    """A small DICOM image that is not a whole-slide image (Secondary Capture, modality OT), in ``study`` (default:
    its own)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    d = Dataset()
    d.file_meta = meta
    d.SOPClassUID, d.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    d.StudyInstanceUID, d.SeriesInstanceUID = study or generate_uid(), generate_uid()
    d.Modality, d.PatientID, d.PatientName = "OT", "OTHER", "Other^Image"
    d.Rows = d.Columns = 8
    d.SamplesPerPixel, d.PhotometricInterpretation = 1, "MONOCHROME2"
    d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 8, 8, 7, 0
    d.PixelData = bytes(64)
    d.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A running Orthanc holding slide SYN4 (with a ContainerIdentifier), a slide without one and a non-WSI image;
    and the same DICOM folders on disk, named by the slide ids they get."""
    root = tmp_path_factory.mktemp("archive")
    a = write_dicom_slide(root / "disk" / "SYN4", SPECS[4])
    b_source = write_dicom_slide(root / "made" / "b", SPECS[5])
    b_uids = uids(b_source)
    b = without_container(b_source, root / "disk" / b_uids["series"])
    other = secondary_capture(root / "other.dcm")
    beside = secondary_capture(root / "beside.dcm", study=uids(a)["study"])  # a non-WSI series in SYN4's study
    with running_orthanc(root / "orthanc") as orthanc:
        orthanc.upload(a, b, other, beside)
        yield {"orthanc": orthanc, "a": a, "b": b, "a_uids": uids(a), "b_uids": b_uids, "root": root,
               "other": pydicom.dcmread(other, stop_before_pixels=True)}


def index(run_cli, *args) -> tuple[int, dict | None, object]:
    result = run_cli("index", *args, *INDEX_ARGS)
    summary = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result.exit_code, summary, result


def region_hits(index_dir: Path, slide_id: str) -> list[tuple[str, float, list]]:
    from retrieval.search import SlideSearcher

    hits = SlideSearcher(index_dir).search_patch(slide_id + REGION, k=5).hits
    return [(h.slide_id, h.score, [(p.x, p.y, p.size, p.score) for p in h.patches]) for h in hits]


def test_indexes_every_wsi_series_and_a_region_query_equals_the_one_on_the_source(archive, run_cli, tmp_path):
    from retrieval.search import SlideSearcher

    orthanc, a, b = archive["orthanc"], archive["a"], archive["b"]
    series_b = archive["b_uids"]["series"]
    code, web, result = index(run_cli, orthanc.source, "--out", tmp_path / "web")
    assert code == 0, result.output
    assert sorted(web["indexed"]) == sorted(["SYN4", series_b]) and not web["failed"]  # SM series only
    code, disk, result = index(run_cli, a, b, "--out", tmp_path / "disk")
    assert code == 0 and sorted(disk["indexed"]) == sorted(web["indexed"]), result.output

    searcher = SlideSearcher(tmp_path / "web")
    meta = searcher.arrays.metadata[searcher.arrays.row_of("SYN4")]
    ids = archive["a_uids"]
    assert meta["path"] == f"{orthanc.source}/studies/{ids['study']}/series/{ids['series']}"
    assert meta["vendor"] == "dicomweb" and meta["mpp"] == pytest.approx(0.25) and meta["width"] == 2048
    for slide_id in ("SYN4", series_b):
        over_http, from_disk = region_hits(tmp_path / "web", slide_id), region_hits(tmp_path / "disk", slide_id)
        assert [h[0] for h in over_http] == [h[0] for h in from_disk] and len(over_http) == 2
        assert np.array_equal([h[1] for h in over_http], [h[1] for h in from_disk])  # the same pixels, the same scores
        assert [h[2] for h in over_http] == [h[2] for h in from_disk]


def test_tiles_reads_a_dicomweb_series_as_the_same_folder_from_disk(archive, run_cli):
    ids = archive["a_uids"]
    url = f"{archive['orthanc'].source}/studies/{ids['study']}/series/{ids['series']}"
    over_http, from_disk = (run_cli("tiles", source, "--mag", "10", "--json") for source in (url, archive["a"]))
    assert over_http.exit_code == 0 and from_disk.exit_code == 0, over_http.output
    web, disk = json.loads(over_http.stdout), json.loads(from_disk.stdout)
    assert web["vendor"] == "dicomweb" and web["path"] == url and disk["vendor"] == "dicom"
    for key in ("dimensions", "mpp", "tiling", "tissue_fraction", "patches"):
        assert web[key] == disk[key], key


def test_a_rerun_indexes_only_new_or_changed_series(archive, run_cli, tmp_path):
    orthanc = archive["orthanc"]
    out = tmp_path / "index"
    code, first, _ = index(run_cli, orthanc.source, "--out", out)
    assert code == 0 and len(first["indexed"]) == 2
    code, again, _ = index(run_cli, orthanc.source, "--out", out)
    assert code == 0 and again["indexed"] == [] and sorted(again["skipped"]) == sorted(first["indexed"])

    orthanc.upload(write_dicom_slide(archive["root"] / "disk" / "SYN6", SPECS[6]))  # a new series
    orthanc.delete_instance(archive["b_uids"]["smallest"])  # a changed one: its smallest level is gone
    code, third, result = index(run_cli, orthanc.source, "--out", out)
    assert code == 0, result.output
    assert sorted(third["indexed"]) == sorted(["SYN6", archive["b_uids"]["series"]]) and third["skipped"] == ["SYN4"]
    assert third["counts"]["slides_ok"] == 3


@pytest.mark.parametrize("narrow", ["study", "series"])
def test_a_study_or_series_url_narrows_the_run(archive, run_cli, tmp_path, narrow):
    ids = archive["a_uids"]
    url = f"{archive['orthanc'].source}/studies/{ids['study']}" + (f"/series/{ids['series']}/" if narrow == "series" else "")
    code, summary, result = index(run_cli, url, "--out", tmp_path / "index")
    assert code == 0 and summary["indexed"] == ["SYN4"], result.output
    left_out = [n for n in summary["notes"] if "left out 1 series that are not whole-slide images (1 OT)" in n]
    assert len(left_out) == (narrow == "study"), summary["notes"]


def test_series_and_studies_without_a_whole_slide_image_are_refused_in_one_line(archive, run_cli, tmp_path):
    other, source = archive["other"], archive["orthanc"].source
    study = f"{source}/studies/{other.StudyInstanceUID}"
    code, _, result = index(run_cli, f"{study}/series/{other.SeriesInstanceUID}", "--out", tmp_path / "a")
    assert code == 2 and "is not a whole-slide image series" in one_error_line(result) and "1 OT" in result.stderr
    code, _, result = index(run_cli, study, "--out", tmp_path / "b")
    assert code == 2 and "holds no whole-slide image series (only 1 OT series)" in one_error_line(result)
    code, _, result = index(run_cli, f"{source}/studies/1.2.3.4", "--out", tmp_path / "c")
    assert code == 2 and "no such study" in one_error_line(result)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before anything is written


def test_unreachable_servers_and_malformed_urls_get_one_line(run_cli, tmp_path):
    code, _, result = index(run_cli, f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web", "--out", tmp_path / "a")
    assert code == 2 and "cannot reach the DICOMweb server (Connection refused)" in one_error_line(result)
    code, _, result = index(run_cli, "dicomweb+http://alice:secret@127.0.0.1:1/dicom-web", "--out", tmp_path / "b")
    line = one_error_line(result)
    assert code == 2 and "credentials do not belong in the URL" in line and "secret" not in line
    code, _, result = index(run_cli, "dicomweb+http://127.0.0.1:1/dicom-web/studies/not-a-uid", "--out", tmp_path / "c")
    assert code == 2 and "is not a DICOM UID" in one_error_line(result)
    (tmp_path / "two.token").write_text("two tokens\n")
    for token, why in ((tmp_path / "none.token", "cannot be read"), (tmp_path / "two.token", "one bearer token")):
        code, _, result = index(run_cli, "dicomweb+http://127.0.0.1:1/dicom-web", "--out", tmp_path / "d",
                                "--dicomweb-token-file", token)
        assert code == 2 and why in one_error_line(result)
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_orthanc_asking_for_credentials_gets_one_line(archive, run_cli, tmp_path):
    with running_orthanc(tmp_path / "locked", users={"alice": "secret"}) as locked:
        locked.upload(archive["a"])
        code, _, result = index(run_cli, locked.source, "--out", tmp_path / "index")
    assert code == 2 and "the server asks for credentials (HTTP 401" in one_error_line(result)
    assert "--dicomweb-token-file" in result.stderr


def test_a_bearer_token_file_opens_a_guarded_server_and_is_never_stored(archive, run_cli, tmp_path, monkeypatch):
    from retrieval.search import SlideSearcher

    monkeypatch.delenv("SLIDESEARCH_DICOMWEB_TOKEN_FILE", raising=False)
    good, bad = tmp_path / "good.token", tmp_path / "bad.token"
    good.write_text("Bearer s3cret-token\n")
    bad.write_text("other-token")
    ids = archive["a_uids"]
    with running_proxy(archive["orthanc"], "s3cret-token") as proxy:
        url = f"dicomweb+{proxy.url}/dicom-web/studies/{ids['study']}"
        code, _, result = index(run_cli, url, "--out", tmp_path / "none")
        assert code == 2 and "asks for credentials (HTTP 401" in one_error_line(result)
        code, _, result = index(run_cli, url, "--out", tmp_path / "bad", "--dicomweb-token-file", bad)
        assert code == 2 and "access denied (HTTP 403" in one_error_line(result)
        # reader processes (--workers 2, small batches) find the token too
        result = run_cli("index", url, "--out", tmp_path / "good", "--dicomweb-token-file", good, "--model", "tiny",
                         "--mag", "10", "--patch", "64", "--workers", "2", "--batch-size", "4", "-q", "--json")
        assert result.exit_code == 0 and json.loads(result.stdout)["indexed"] == ["SYN4"], result.output
        assert proxy.forwarded > 0
    stored = b"".join(p.read_bytes() for p in (tmp_path / "good").rglob("*") if p.is_file())
    assert b"s3cret-token" not in stored
    searcher = SlideSearcher(tmp_path / "good")
    assert searcher.arrays.metadata[searcher.arrays.row_of("SYN4")]["path"].startswith(f"dicomweb+{proxy.url}/")


def test_a_missing_frame_fails_that_slide_in_one_line(archive, run_cli, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("t0ken")
    monkeypatch.setenv("SLIDESEARCH_DICOMWEB_TOKEN_FILE", str(token))
    with running_proxy(archive["orthanc"], "t0ken") as proxy:
        proxy.missing.add((archive["a_uids"]["smallest"], 4))  # its last frame (opening reads frame 1)
        code, summary, result = index(run_cli, f"dicomweb+{proxy.url}/dicom-web", "--out", tmp_path / "index")
    assert code == 3, result.output
    reason = summary["failed"]["SYN4"]
    assert reason.startswith(f"dicomweb+{proxy.url}/dicom-web/studies/") and "\n" not in reason
    assert ": a frame of level 2 at (" in reason and "is missing on the server (HTTP 404 Not Found" in reason
    assert archive["b_uids"]["series"] in summary["indexed"] or archive["b_uids"]["series"] in summary["skipped"]


def test_addresses_are_parsed_strictly():
    from indexer.errors import UserError
    from indexer.slides.dicomweb import DicomWebAddress

    full = DicomWebAddress.parse("dicomweb+https://pacs.example:8443/wado/rs/studies/1.2.3/series/4.5.6")
    assert (full.root, full.study, full.series) == ("https://pacs.example:8443/wado/rs", "1.2.3", "4.5.6")
    assert full.url() == "dicomweb+https://pacs.example:8443/wado/rs/studies/1.2.3/series/4.5.6"
    assert DicomWebAddress.parse("dicomweb+http://h/dicom-web/").url() == "dicomweb+http://h/dicom-web"
    for bad in ("dicomweb+http:///x", "dicomweb+http://h:port/x", "dicomweb+http://h/x?limit=1", "http://h/x"):
        with pytest.raises(UserError):
            DicomWebAddress.parse(bad)
