"""Synthetic DICOM-WSI slides: a folder of VL Whole Slide Microscopy instances (JPEG tiles), one per level."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from retrieval.demo.synthetic import SyntheticSlideSpec, level_shapes, level_tiles

_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def write_dicom_slide(folder: str | Path, spec: SyntheticSlideSpec, quality: int = 90) -> Path:
    """Write ``spec`` as a DICOM-WSI pyramid: ``folder/level<i>.dcm`` per level (TILED_FULL, JPEG baseline).

    Pixel spacing is ``spec.mpp`` µm at level 0 (stored in mm, as DICOM does), times the downsample above.
    UIDs are derived from ``spec.seed`` so the same spec gives the same files.

    Returns:
        The folder (which is the slide).
    """
    from pydicom.uid import generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seed = f"slidesearch-synthetic-{spec.seed}-{spec.width}x{spec.height}"
    uids = {name: generate_uid(entropy_srcs=[seed, name]) for name in ("study", "series", "frame")}
    for index, (ds, width, height) in enumerate(level_shapes(spec)):
        frames = [_jpeg(tile, quality) for tile in level_tiles(spec, ds, width, height)]
        dataset = _level_dataset(spec, index, ds, width, height, frames, uids,
                                 generate_uid(entropy_srcs=[seed, f"level{index}"]))
        dataset.save_as(folder / f"level{index}.dcm", enforce_file_format=True)
    return folder


def _jpeg(tile, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(tile, "RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _level_dataset(spec, index, ds, width, height, frames, uids, instance_uid):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _WSI_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = instance_uid
    meta.TransferSyntaxUID = JPEGBaseline8Bit
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    d = Dataset()
    d.file_meta = meta
    d.SOPClassUID, d.SOPInstanceUID = _WSI_SOP_CLASS, instance_uid
    d.StudyInstanceUID, d.SeriesInstanceUID = uids["study"], uids["series"]
    d.FrameOfReferenceUID = uids["frame"]
    d.Modality, d.PatientName, d.PatientID = "SM", "Synthetic^Slide", f"SYN{spec.seed}"
    d.ContainerIdentifier, d.InstanceNumber, d.SeriesNumber = f"SYN{spec.seed}", index + 1, 1
    d.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if index == 0 else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"]
    d.Rows = d.Columns = spec.tile
    d.TotalPixelMatrixColumns, d.TotalPixelMatrixRows = width, height
    d.TotalPixelMatrixFocalPlanes, d.NumberOfOpticalPaths = 1, 1
    d.NumberOfFrames, d.DimensionOrganizationType = len(frames), "TILED_FULL"
    d.SamplesPerPixel, d.PhotometricInterpretation, d.PlanarConfiguration = 3, "YBR_FULL_422", 0
    d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation = 8, 8, 7, 0
    d.LossyImageCompression, d.LossyImageCompressionMethod = "01", "ISO_10918_1"
    spacing_mm = spec.mpp * ds / 1000.0
    d.ImagedVolumeWidth, d.ImagedVolumeHeight = spec.width * spec.mpp / 1000.0, spec.height * spec.mpp / 1000.0
    d.ImagedVolumeDepth = 0.001
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]  # (row spacing, column spacing) in mm
    measures.SliceThickness, measures.SpacingBetweenSlices = 0.001, 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    d.SharedFunctionalGroupsSequence = [shared]
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem, origin.YOffsetInSlideCoordinateSystem = 20.0, 40.0
    d.TotalPixelMatrixOriginSequence = [origin]
    d.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    d.OpticalPathSequence = [path]
    d.PixelData = encapsulate(frames)
    d["PixelData"].VR = "OB"
    return d
