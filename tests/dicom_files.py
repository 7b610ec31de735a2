"""Test helper: DICOM files written with pydicom (12-bit monochrome, MONOCHROME1, RGB,
multi-frame, RLE-compressed, broken), each carrying a planted patient name and ID."""

import pathlib

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless, generate_uid

# Planted in every header: no output may ever contain them.
PATIENT_NAME = "Zyxwvutsrq^Planted"
PATIENT_ID = "PID-98765-QWERTY"


def ramp(rows: int = 32, columns: int = 32, *, top: int = 4095) -> np.ndarray:
    """uint16 [rows, columns]: 0 at the left to `top` at the right, the same on every row."""
    return np.tile(np.linspace(0, top, columns).round().astype(np.uint16), (rows, 1))


def write(path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12,
          slope=None, intercept=None, center=None, width=None, series_uid: str | None = None,
          compress: bool = False, transfer_syntax=None, extra=None) -> pathlib.Path:
    """Writes a DICOM file of `pixels`: uint16/uint8 [R, C], [F, R, C] (multi-frame) or
    uint8 [R, C, 3] (RGB). Returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    ds.InstitutionName = PATIENT_NAME
    ds.Modality = "MR"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    colour = pixels.ndim == 3 and pixels.shape[-1] == 3
    frames = pixels.shape[0] if pixels.ndim == 3 and not colour else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = 8 if pixels.dtype == np.uint8 else bits_stored
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for keyword, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept),
                           ("WindowCenter", center), ("WindowWidth", width)):
        if value is not None:
            setattr(ds, keyword, value)
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress:
        ds.compress(RLELossless)
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def write_broken(folder) -> dict[str, pathlib.Path]:
    """Bad DICOM files in `folder`: no pixel data, an unsupported transfer syntax, truncated,
    a garbled header. Returns {kind: path}."""
    folder = pathlib.Path(folder)
    good = write(folder / "good.tmp", ramp())
    paths = {}
    ds = pydicom.dcmread(good)
    del ds.PixelData
    paths["no_pixels"] = folder / "no_pixels.dcm"
    ds.save_as(paths["no_pixels"])
    # MPEG-2 video: a transfer syntax pydicom has no decoder for, with encapsulated pixel data.
    paths["unsupported"] = write(folder / "unsupported.dcm", ramp(), compress=True,
                                 transfer_syntax=pydicom.uid.MPEG2MPML)
    data = good.read_bytes()
    paths["truncated"] = folder / "truncated.dcm"
    paths["truncated"].write_bytes(data[:len(data) - 700])
    paths["garbled"] = folder / "garbled.dcm"
    paths["garbled"].write_bytes(data[:132] + bytes(range(256)) * 4)
    good.unlink()
    return paths
