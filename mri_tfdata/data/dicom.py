"""DICOM files: recognised, checked and read to 8-bit pixels (modality rescale, VOI window, MONOCHROME1).

A DICOM file is one whose name ends in .dcm or .dicom, or any other non-image file that carries
the `DICM` marker at byte 128 (hospital exports often have no extension, or a numeric one). Each
frame becomes one 8-bit image:

1. the stored values, decoded by pydicom (any transfer syntax it has a decoder for);
2. the modality rescale: value * RescaleSlope + RescaleIntercept (a Modality LUT Sequence
   instead, when the file has one);
3. the display window, first found of: the `window` argument (`--dicom_window=center,width`),
   the file's VOI LUT Sequence, its first WindowCenter/WindowWidth pair (VOILUTFunction LINEAR,
   LINEAR_EXACT or SIGMOID, as DICOM PS3.3 C.11.2.1.2 defines them), else the frame's own
   minimum to maximum;
4. MONOCHROME1 inverted (its low values are white); colour files (RGB, YBR, palette) are
   converted to RGB and only scaled to 8 bits.

The arithmetic runs in float32 numpy, one pass per step, so a 512 x 512 slice costs about a
millisecond. Only group 0028 (the pixel module: size, rescale, window) is read to convert the
pixels; no other header value (patient name, ID, dates) is ever returned, logged or put in an
error message: a file is named by its path, a frame by `path#N` (N from 1).
"""

import dataclasses
import math
import os
import pathlib
import stat

import numpy as np

MAGIC_OFFSET = 128
MAGIC = b"DICM"
SUFFIXES = (".dcm", ".dicom")
# A multi-frame series file is larger than an image but still bounded: a file above this is
# not read (2 GiB: e.g. 4,000 frames of 512 x 512 at 16 bits).
MAX_FILE_BYTES = 2 * 1024 ** 3
FRAME_SEPARATOR = "#"
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420",
           "PALETTE COLOR")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class DicomError(ValueError):
    """A DICOM file that cannot give pixels; the message names the cause, never a header value."""


@dataclasses.dataclass(frozen=True)
class Window:
    """A linear display window (DICOM's WindowCenter/WindowWidth), in rescaled units."""

    center: float
    width: float

    def __post_init__(self):
        if not (math.isfinite(self.center) and math.isfinite(self.width) and self.width >= 1):
            raise ValueError(f"window center={self.center}, width={self.width}: the centre must "
                             "be a number and the width a number of at least 1")

    def __str__(self):
        return f"{self.center:g},{self.width:g}"


def parse_window(text: str) -> Window:
    """`center,width` (e.g. "40,400") as a Window.

    Raises:
      ValueError: not two numbers, or a width below 1.
    """
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not center,width (e.g. 40,400)")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"{text!r} is not two numbers center,width (e.g. 40,400)") from None
    return Window(center, width)


def has_magic(head: bytes) -> bool:
    """True when `head` (a file's first 132 bytes or more) carries the DICM marker at byte 128."""
    return head[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] == MAGIC


def is_dicom_path(path) -> bool:
    """True for a .dcm/.dicom file, or a regular file of another suffix with the DICM marker.

    Only the first 132 bytes of a file are read, and only when its suffix says nothing; .jpg,
    .jpeg and .png files are never DICOM.
    """
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return True
    if suffix in (".jpg", ".jpeg", ".png"):
        return False
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        with open(path, "rb") as f:
            return has_magic(f.read(MAGIC_OFFSET + len(MAGIC)))
    except OSError:
        return False


def frame_key(path, frame: int, frames: int) -> str:
    """The name of one frame: the path itself for a single-frame file, else `path#N` (N from 1)."""
    return str(path) if frames == 1 else f"{path}{FRAME_SEPARATOR}{frame + 1}"


def split_key(key) -> tuple[pathlib.Path, int]:
    """(path, frame index from 0) of a name made by frame_key; a plain path is frame 0."""
    text = str(key)
    base, separator, number = text.rpartition(FRAME_SEPARATOR)
    if separator and number.isdigit() and int(number) >= 1 and not os.path.exists(text):
        return pathlib.Path(base), int(number) - 1
    return pathlib.Path(text), 0


def _pydicom():
    """pydicom, configured once not to warn about odd header values (its warnings quote them)."""
    import pydicom
    from pydicom import config

    config.settings.reading_validation_mode = config.IGNORE
    return pydicom


def _check_file(path: pathlib.Path) -> None:
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise DicomError("not a regular file (a device, FIFO or socket)")
    if info.st_size == 0:
        raise DicomError("empty file (0 bytes)")
    if info.st_size > MAX_FILE_BYTES:
        raise DicomError(f"{info.st_size} bytes, more than the {MAX_FILE_BYTES} accepted for "
                         "one DICOM file")


def _number(ds, keyword: str, default: float) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    if not isinstance(value, (int, float)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else default  # multi-valued: the first
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def _frames(ds) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        raise DicomError("damaged DICOM header (NumberOfFrames is not a number)") from None


def _transfer_syntax_problem(ds) -> str | None:
    """Why pydicom cannot decode this file's pixel data, or None."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    uid = UID(str(meta.get("TransferSyntaxUID", "")) if meta is not None else "")
    if not uid:
        return "no transfer syntax in its file meta information"
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return (f"transfer syntax {uid.name} ({uid}) has no pixel data decoder; convert the file "
                "to an uncompressed or supported compressed syntax (e.g. with gdcmconv --raw)")
    if not decoder.is_available:
        return (f"transfer syntax {uid.name} ({uid}) needs a decoder plugin that is not "
                "installed (pylibjpeg or python-gdcm)")
    return None


@dataclasses.dataclass(frozen=True)
class RawLayout:
    """Where a single uncompressed little-endian monochrome frame lies in its file, and how its
    values become grey levels, so that TensorFlow reads it with no Python (see encoded_frame).

    Attributes:
      offset: byte offset of the pixel data in the file.
      dtype: "uint8", "uint16" or "int16", little-endian.
      rows, columns: the frame's size.
      slope, intercept: the modality rescale.
      step: the file's own VOI step (_window with no forced window): "linear" or "minmax".
      invert: MONOCHROME1.
    """

    offset: int
    dtype: str
    rows: int
    columns: int
    slope: float
    intercept: float
    step: tuple
    invert: bool


@dataclasses.dataclass(frozen=True)
class Info:
    """What checking a DICOM file found: its frames, and its RawLayout when it has one."""

    frames: int
    raw: RawLayout | None = None


_RAW_DTYPES = {(8, 0): "uint8", (16, 0): "uint16", (16, 1): "int16"}


def _raw_layout(ds, frames: int, offset) -> RawLayout | None:
    """The RawLayout of a file TensorFlow can read alone (one uncompressed monochrome frame, all
    bits stored, no lookup tables), else None."""
    syntax = ds.file_meta.get("TransferSyntaxUID")
    bits, stored = int(ds.get("BitsAllocated") or 0), int(ds.get("BitsStored") or 0)
    dtype = _RAW_DTYPES.get((bits, int(ds.get("PixelRepresentation") or 0)))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if (frames != 1 or offset is None or dtype is None or syntax is None
            or syntax.is_compressed or not syntax.is_little_endian
            or photometric not in _MONOCHROME or int(ds.get("SamplesPerPixel") or 1) != 1
            or (dtype == "int16" and stored != bits) or "ModalityLUTSequence" in ds):
        return None
    step = _window(ds, None)
    if step[0] not in ("linear", "minmax"):
        return None
    return RawLayout(offset=int(offset), dtype=dtype, rows=int(ds.Rows), columns=int(ds.Columns),
                     slope=_number(ds, "RescaleSlope", 1.0),
                     intercept=_number(ds, "RescaleIntercept", 0.0), step=step,
                     invert=photometric == "MONOCHROME1")


def inspect(path) -> Info:
    """Checks a DICOM file as far as reading its pixels needs, decoding compressed frames once.

    Uncompressed pixel data is checked for its length (all of it is then readable); compressed
    frames are decoded, since only a decode finds damaged data.

    Returns:
      Its Info: the number of frames, and the RawLayout of a simple one.

    Raises:
      DicomError: not a readable DICOM file, no pixel data, an unsupported transfer syntax,
        absurd dimensions, or damaged/truncated pixel data; the message says which.
      OSError: the file cannot be read.
    """
    from mri_tfdata.data import images  # the pixel bound shared with JPEG/PNG

    pydicom = _pydicom()
    path = pathlib.Path(path)
    _check_file(path)
    try:
        ds = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError:
        raise DicomError("not a DICOM file (no DICM marker at byte 128)") from None
    except (ValueError, TypeError, KeyError, EOFError, OSError, AttributeError,
            NotImplementedError, IndexError) as e:
        raise DicomError(f"damaged or truncated DICOM file (its header cannot be parsed: "
                         f"{type(e).__name__})") from None
    if "PixelData" not in ds:
        kind = "float pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) \
            else "no pixel data"
        raise DicomError(f"DICOM file with {kind} (e.g. a report, a DICOMDIR or a "
                         "presentation state), not an image")
    problem = _transfer_syntax_problem(ds)
    if problem:
        raise DicomError(problem)
    frames = _frames(ds)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if rows < 1 or columns < 1:
        raise DicomError("damaged DICOM header (Rows or Columns missing or zero)")
    if rows * columns > images.MAX_PIXELS:
        raise DicomError(f"declares {columns}x{rows} pixels per frame, more than the "
                         f"{images.MAX_PIXELS} accepted")
    if photometric not in _MONOCHROME + _COLOUR or samples not in (1, 3):
        raise DicomError(f"unsupported photometric interpretation {photometric or 'missing'} "
                         f"with {samples} samples per pixel")
    bits = int(ds.get("BitsAllocated") or 0)
    # The offset of the pixel data, known while the element is still raw (before ds.PixelData).
    offset = getattr(ds.get_item("PixelData"), "value_tell", None)
    if bits not in (1, 8, 16, 32):
        raise DicomError(f"unsupported BitsAllocated {bits} (1, 8, 16 or 32 are read)")
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            from pydicom.pixels import iter_pixels
            for _ in iter_pixels(ds):
                pass
        else:
            expected = rows * columns * samples * frames * bits // 8
            if len(ds.PixelData) < expected:
                raise DicomError(f"truncated DICOM file: {len(ds.PixelData)} bytes of pixel data "
                                 f"where its header declares {expected}")
    except DicomError:
        raise
    except Exception as e:  # noqa: BLE001 -- decoder plugins raise many types for damaged data.
        raise DicomError(f"damaged DICOM pixel data (the decoder failed: {type(e).__name__})") \
            from None
    return Info(frames, _raw_layout(ds, frames, offset))


def series_key(path) -> str:
    """The series a file belongs to: its SeriesInstanceUID, else its folder (a file that cannot
    be read, or a non-DICOM file, belongs to its folder)."""
    path = pathlib.Path(split_key(path)[0])
    try:
        ds = _pydicom().dcmread(path, stop_before_pixels=True,
                                specific_tags=["SeriesInstanceUID"])
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
    except Exception:  # noqa: BLE001 -- any unreadable header: grouped by folder.
        uid = ""
    return uid or str(path.parent)


def _window(ds, window: Window | None) -> tuple:
    """The VOI step for a monochrome file: ("linear", low, scale), ("threshold", level),
    ("sigmoid", center, width), ("lut",) for a VOI LUT Sequence, or ("minmax",).

    A linear window maps `value` to clip((value - low) * scale, 0, 255): DICOM's LINEAR is
    ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, LINEAR_EXACT (x - c) / w + 0.5 times 255.
    """
    if window is not None:
        center, width, function = window.center, window.width, "LINEAR"
    elif "VOILUTSequence" in ds:
        return ("lut",)
    else:
        center, width = _number(ds, "WindowCenter", math.nan), _number(ds, "WindowWidth", math.nan)
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        if not (math.isfinite(center) and math.isfinite(width) and width >= 1):
            return ("minmax",)
    if function == "SIGMOID":
        return ("sigmoid", center, width)
    if function == "LINEAR_EXACT":
        return ("linear", center - width / 2, 255.0 / width)
    if width > 1:
        return ("linear", center - 0.5 - (width - 1) / 2, 255.0 / (width - 1))
    return ("threshold", center - 0.5)


def _apply_linear(values: np.ndarray, low: float, scale: float) -> np.ndarray:
    values -= np.float32(low)
    values *= np.float32(scale)
    np.clip(values, 0, 255, out=values)
    return values


def _min_max(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if high <= low:
        values[...] = 0
        return values
    return _apply_linear(values, low, 255.0 / (high - low))


def _affine(stored: np.ndarray, ds, step: tuple) -> tuple[float, float] | None:
    """(a, b) with grey = clip(stored * a + b, 0, 255) when rescale, window and MONOCHROME1
    together are one affine map ("linear" and "minmax" steps), else None.

    Folding them into one multiply-add is both faster and what encoded_frame's TensorFlow path
    computes too, so both give the same pixels. The min-max of rescaled values is that of the
    stored ones, reversed when the slope is negative.
    """
    if "ModalityLUTSequence" in ds or step[0] not in ("linear", "minmax"):
        return None
    slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
    if step[0] == "linear":
        _, low, scale = step
        a, b = slope * scale, (intercept - low) * scale
    else:
        a, b = _min_max_affine(float(stored.min()), float(stored.max()), slope)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        a, b = -a, 255.0 - b
    return a, b


def _min_max_affine(low: float, high: float, slope: float) -> tuple[float, float]:
    """(a, b) mapping stored values `low`..`high` to 0..255 (255..0 for a negative slope)."""
    if high <= low or slope == 0:
        return 0.0, 0.0
    k = 255.0 / (high - low)
    return (k, -low * k) if slope > 0 else (-k, high * k)


def _grey(stored: np.ndarray, ds, window: Window | None) -> np.ndarray:
    """Monochrome stored values -> float32 in [0, 255], by the steps of the module docstring,
    MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    step = _window(ds, window)
    affine = _affine(stored, ds, step)
    if affine is not None:
        values = stored.astype(np.float32)
        values *= np.float32(affine[0])
        values += np.float32(affine[1])
        return np.clip(values, 0, 255, out=values)
    if "ModalityLUTSequence" in ds:
        values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    else:
        values = stored.astype(np.float32)
        values *= np.float32(_number(ds, "RescaleSlope", 1.0))
        values += np.float32(_number(ds, "RescaleIntercept", 0.0))
    if step[0] == "linear":
        values = _apply_linear(values, step[1], step[2])
    elif step[0] == "threshold":
        values = np.where(values > step[1], np.float32(255), np.float32(0))
    elif step[0] == "sigmoid":  # 255 / (1 + exp(-4 (x - c) / w))
        _, center, width = step
        np.multiply(values, np.float32(-4.0 / width), out=values)
        values += np.float32(4.0 * center / width)
        np.exp(values, out=values)
        values += np.float32(1.0)
        np.divide(np.float32(255.0), values, out=values)
    elif step[0] == "lut":
        # A non-linear table: pydicom applies it; its output range is then scaled to 8 bits.
        values = _min_max(np.asarray(apply_voi_lut(values, ds, prefer_lut=True), np.float32))
    else:
        values = _min_max(values)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        np.subtract(np.float32(255), values, out=values)
    return values


def _colour(stored: np.ndarray, ds) -> np.ndarray:
    """Colour stored values (RGB after pydicom's conversion) -> uint8 RGB."""
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut
        stored = apply_color_lut(stored, ds)
        bits = 16 if stored.dtype.itemsize > 1 else 8
    else:
        bits = int(ds.get("BitsStored") or 8)
    if stored.dtype == np.uint8 and bits <= 8:
        return stored
    return (stored.astype(np.float32) * np.float32(255.0 / (2 ** bits - 1))).round().clip(
        0, 255).astype(np.uint8)


def read_frame(path, frame: int = 0, *, window: Window | None = None) -> np.ndarray:
    """One frame of a DICOM file as 8-bit pixels (see the module docstring for the steps).

    Reads only the pixel module and that frame's data; call `inspect` first for a file not yet
    checked (this assumes its pixel data is sound).

    Args:
      path: the DICOM file.
      frame: the frame, from 0.
      window: a display window replacing the file's own; None for the file's.

    Returns:
      uint8 [H, W] for monochrome files, [H, W, 3] for colour ones.
    """
    pydicom = _pydicom()
    from pydicom.pixels import pixel_array

    header = pydicom.Dataset()
    stored = pixel_array(os.fspath(path), index=frame, ds_out=header)
    if stored.ndim == 3 and stored.shape[-1] == 3:
        return _colour(stored, header)
    grey = _grey(stored, header, window)
    return np.rint(grey, out=grey).astype(np.uint8)


# The columns of recipe_columns, with their dtypes: how encoded_frame reads each example.
_RECIPE = {"raw": bool, "offset": np.int64, "dtype": np.int32, "rows": np.int32,
           "columns": np.int32, "a": np.float32, "b": np.float32, "minmax": bool,
           "slope": np.float64, "invert": bool}
_DTYPE_CODES = ("uint8", "uint16", "int16")


def recipe_columns(infos, window: Window | None = None) -> dict[str, np.ndarray]:
    """One column per field of _RECIPE, one row per example, for encoded_frame.

    Args:
      infos: the Info of each example's file (None for a JPEG/PNG).
      window: the forced window, as for read_frame.
    """
    rows = []
    for info in infos:
        raw = info.raw if info is not None else None
        step = raw and (_window({}, window) if window is not None else raw.step)
        if raw is None or step[0] not in ("linear", "minmax"):
            rows.append({key: kind(0) for key, kind in _RECIPE.items()})
            continue
        header = {"RescaleSlope": raw.slope, "RescaleIntercept": raw.intercept,
                  "PhotometricInterpretation": "MONOCHROME1" if raw.invert else "MONOCHROME2"}
        a, b = _affine(np.zeros(1), header, step) if step[0] == "linear" else (0.0, 0.0)
        rows.append({"raw": True, "offset": raw.offset, "dtype": _DTYPE_CODES.index(raw.dtype),
                     "rows": raw.rows, "columns": raw.columns, "a": a, "b": b,
                     "minmax": step[0] == "minmax", "slope": raw.slope, "invert": raw.invert})
    return {key: np.array([row[key] for row in rows], dtype=kind)
            for key, kind in _RECIPE.items()}


def _raw_frame(path, recipe):
    """TensorFlow's own reading of a RawLayout frame: read_frame's arithmetic (_affine), with no
    Python."""
    import tensorflow as tf

    count = recipe["rows"] * recipe["columns"]
    itemsize = tf.where(recipe["dtype"] == 0, 1, 2)
    data = tf.strings.substr(tf.io.read_file(path), recipe["offset"],
                             tf.cast(count * itemsize, tf.int64))
    stored = tf.switch_case(recipe["dtype"], [
        lambda: tf.cast(tf.io.decode_raw(data, tf.uint8), tf.float32),
        lambda: tf.cast(tf.io.decode_raw(data, tf.uint16, little_endian=True), tf.float32),
        lambda: tf.cast(tf.io.decode_raw(data, tf.int16, little_endian=True), tf.float32)])

    def min_max():  # _min_max_affine, in float64 as Python computes it
        low = tf.cast(tf.reduce_min(stored), tf.float64)
        high = tf.cast(tf.reduce_max(stored), tf.float64)
        flat = tf.logical_or(high <= low, tf.equal(recipe["slope"], 0.0))
        zero = tf.constant(0.0, tf.float64)
        k = 255.0 / tf.where(flat, tf.constant(1.0, tf.float64), high - low)
        a = tf.where(flat, zero, tf.where(recipe["slope"] > 0, k, -k))
        b = tf.where(flat, zero, tf.where(recipe["slope"] > 0, -low * k, high * k))
        a, b = tf.where(recipe["invert"], -a, a), tf.where(recipe["invert"], 255.0 - b, b)
        return tf.cast(a, tf.float32), tf.cast(b, tf.float32)

    a, b = tf.cond(recipe["minmax"], min_max, lambda: (recipe["a"], recipe["b"]))
    grey = tf.clip_by_value(stored * a + b, 0.0, 255.0)
    return tf.reshape(tf.cast(tf.round(grey), tf.uint8), [recipe["rows"], recipe["columns"], 1])


def encoded_frame(path, frame, recipe, *, window: Window | None = None):
    """A TensorFlow op: one frame's 8-bit pixels, serialized for the pipeline's decoder.

    A frame with a raw recipe (recipe_columns) is read by TensorFlow alone, in parallel with no
    Python lock; any other by read_frame through tf.numpy_function. Either gives the same pixels.

    Args:
      path: tf.string scalar, the file.
      frame: tf.int64 scalar, the frame from 0.
      recipe: one row of recipe_columns, as tensors.
      window: as for read_frame.

    Returns:
      tf.string scalar: the uint8 [H, W, 1 or 3] pixels as tf.io.serialize_tensor writes them,
      which decoding.decode recognises (decoding.is_pixels) and expands to RGB.
    """
    import tensorflow as tf

    def read(path_bytes, index):
        pixels = read_frame(path_bytes.decode(), int(index), window=window)
        return pixels if pixels.ndim == 3 else pixels[..., None]

    def by_pydicom():
        pixels = tf.numpy_function(read, [path, frame], tf.uint8, stateful=False)
        pixels.set_shape([None, None, None])
        return pixels

    pixels = tf.cond(recipe["raw"], lambda: _raw_frame(path, recipe), by_pydicom)
    return tf.io.serialize_tensor(pixels)


def frame_count(path) -> int:
    """The number of frames a DICOM file's header declares (its pixel data is not read).

    Raises:
      DicomError: the header cannot be read.
      OSError: the file cannot be read.
    """
    pydicom = _pydicom()
    _check_file(pathlib.Path(path))
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
    except Exception:  # noqa: BLE001 -- any unreadable header
        raise DicomError("not a readable DICOM file (damaged or truncated header)") from None
    return _frames(ds)
