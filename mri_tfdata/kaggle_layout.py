"""The Kaggle Brain Tumor MRI folder tree: split and class folders, junk, reading the images."""

import dataclasses
import io
import pathlib
from typing import Union

import numpy as np
from absl import logging
from PIL import Image

from mri_tfdata.errors import UserError

CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")

DOWNLOAD_URL = "https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset"
DOWNLOAD_HINT = (
    f"Download the Kaggle Brain Tumor MRI Dataset from {DOWNLOAD_URL} and unpack it (or, for "
    "the TFDS builder, drop its zip archive) so that the folder holds Training/<class>/*.jpg and "
    "Testing/<class>/*.jpg, with <class> among " + ", ".join(CLASS_NAMES) + "."
)

# Older versions of the dataset (and its figshare/SARTAJ sources) name the folders with a suffix.
CLASS_ALIASES = {
    **{name: label for label, name in enumerate(CLASS_NAMES)},
    "glioma_tumor": 0,
    "meningioma_tumor": 1,
    "no_tumor": 2,
    "pituitary_tumor": 3,
}

# Folder names (compared lower-case) of each split; Kaggle uses Training/Testing.
SPLIT_FOLDER_NAMES = {
    "train": ("training", "train"),
    "test": ("testing", "test"),
    "validation": ("validation", "val"),
}
REQUIRED_SPLITS = ("train", "test")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# 8192 x 8192: far above any MRI slice (the Kaggle ones are mostly 512 x 512); decoding more than
# this as uint8 RGB would take > 200 MB for a single image, the signature of a decompression bomb.
DEFAULT_MAX_PIXELS = 8192 * 8192

# Windows and macOS junk that is not hidden by a leading dot.
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})


class CorruptImageError(ValueError):
    """A file that is not a readable image: empty, not an image, truncated, or absurdly large."""


@dataclasses.dataclass(frozen=True)
class LabeledFile:
    """One image file of a split.

    Attributes:
      path: Absolute path of the file.
      relpath: POSIX path relative to the folder that holds the split folders,
        e.g. "Training/glioma/Tr-gl_0010.jpg"; stable across machines, so usable as a key.
      label: Index into CLASS_NAMES.
    """

    path: pathlib.Path
    relpath: str
    label: int


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """An image ready to store: 8-bit RGB encoded bytes.

    Attributes:
      data: Encoded JPEG or PNG bytes.
      format: "jpeg" or "png".
      reencoded: False when `data` is the original file, True when it was converted to PNG.
    """

    data: bytes
    format: str
    reencoded: bool


def is_junk(path: pathlib.Path) -> bool:
    """True for hidden files and folders (.DS_Store, .ipynb_checkpoints/), OS junk (Thumbs.db)."""
    return path.name.startswith(".") or path.name.lower() in _JUNK_NAMES


def _visible_children(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if not is_junk(p))


def _match_split_dirs(folder: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    found: dict[str, list[pathlib.Path]] = {}
    for child in _visible_children(folder):
        if not child.is_dir():
            continue
        for split, names in SPLIT_FOLDER_NAMES.items():
            if child.name.lower() in names:
                found.setdefault(split, []).append(child)
    return found


def _expected_paths(base: pathlib.Path) -> str:
    return f"{base / 'Training'}/<class>/*.jpg and {base / 'Testing'}/<class>/*.jpg"


def find_split_dirs(root: Union[str, pathlib.Path]) -> dict[str, pathlib.Path]:
    """Finds the split folders of a Kaggle-style tree.

    Accepts Training/Testing (the Kaggle names), train/test, an optional validation/val, in any
    letter case, either directly in `root` or inside one wrapping folder (as some unpackers make).

    Args:
      root: The folder the user pointed at.

    Returns:
      A dict from split name ("train", "test" and, when present, "validation") to its folder.

    Raises:
      UserError: `root` is absent or empty, or lacks a train or test folder, or holds two folders
        for one split. The message lists the expected paths and how to get the data.
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir() or not _visible_children(root):
        state = (
            "does not exist"
            if not root.exists()
            else ("is not a folder" if not root.is_dir() else "is empty")
        )
        raise UserError(
            f"The dataset folder {root} {state}; expected {_expected_paths(root)}. {DOWNLOAD_HINT}"
        )
    base = root
    found = _match_split_dirs(base)
    if not found:
        subdirs = [p for p in _visible_children(root) if p.is_dir()]
        if len(subdirs) == 1:
            base = subdirs[0]  # One wrapping folder, e.g. "brain-tumor-mri-dataset/Training".
            found = _match_split_dirs(base)
    for split, dirs in found.items():
        if len(dirs) > 1:
            raise UserError(
                f"{base} holds {len(dirs)} folders for the {split} split "
                f"({', '.join(d.name for d in dirs)}); keep exactly one of them."
            )
    missing = [s for s in REQUIRED_SPLITS if s not in found]
    if missing:
        seen = ", ".join(p.name for p in _visible_children(base)) or "nothing visible"
        accepted = "; ".join(f"{s}: {'/'.join(SPLIT_FOLDER_NAMES[s])}" for s in missing)
        raise UserError(
            f"No {' or '.join(missing)} split folder in {base} (it holds: {seen}); expected "
            f"{_expected_paths(base)} (accepted names, any case: {accepted}). {DOWNLOAD_HINT}"
        )
    return {split: dirs[0] for split, dirs in found.items()}


def class_label(folder_name: str) -> int:
    """Returns the label of a class folder name (Kaggle name or older `_tumor` alias, any case).

    Raises:
      UserError: The name is not a known class; the message lists the accepted names.
    """
    label = CLASS_ALIASES.get(folder_name.lower())
    if label is None:
        raise UserError(
            f"Unknown class folder {folder_name!r}; the accepted class folder names are "
            f"{', '.join(CLASS_ALIASES)}. Rename or move that folder out of the dataset."
        )
    return label


def list_examples(split_dir: Union[str, pathlib.Path]) -> list[LabeledFile]:
    """Lists the image files of one split folder, labelled by their class folder.

    Hidden files and folders, OS junk and files that are not .jpg/.jpeg/.png are skipped; the
    files are not opened here (see read_rgb_image), so corrupt images are still listed.

    Args:
      split_dir: A split folder as returned by find_split_dirs.

    Returns:
      The files sorted by relpath (deterministic on every filesystem).

    Raises:
      UserError: A class folder has an unknown name, or the split holds no image at all.
    """
    split_dir = pathlib.Path(split_dir)
    examples = []
    for child in _visible_children(split_dir):
        if not child.is_dir():
            if child.suffix.lower() in IMAGE_SUFFIXES:
                logging.warning("Ignoring %s: images must sit in a class folder.", child)
            continue
        label = class_label(child.name)
        stack = [child]
        while stack:  # Walks nested folders too, never entering hidden ones.
            for path in _visible_children(stack.pop()):
                if path.is_dir():
                    stack.append(path)
                elif path.suffix.lower() in IMAGE_SUFFIXES:
                    relpath = path.relative_to(split_dir.parent).as_posix()
                    examples.append(LabeledFile(path=path, relpath=relpath, label=label))
    if not examples:
        raise UserError(
            f"The split folder {split_dir} holds no .jpg/.jpeg/.png image in a class folder "
            f"({', '.join(CLASS_NAMES)}). {DOWNLOAD_HINT}"
        )
    return sorted(examples, key=lambda e: e.relpath)


def check_image_header(
    path_or_bytes: Union[str, pathlib.Path, bytes], max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[int, int]:
    """Reads only an image's header and refuses absurd dimensions before anything is decoded.

    Args:
      path_or_bytes: A file path or the encoded bytes.
      max_pixels: Largest accepted width * height.

    Returns:
      (width, height) as declared by the header.

    Raises:
      CorruptImageError: Not a recognisable image, or more than `max_pixels` pixels.
    """
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    try:
        with Image.open(source) as img:  # Lazy: parses the header, decodes no pixel.
            width, height = img.size
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"not a readable image ({e})") from e
    if width * height > max_pixels:
        raise CorruptImageError(
            f"declares {width}x{height} pixels, more than the {max_pixels} accepted "
            "(a decompression bomb or not an MRI slice)"
        )
    return width, height


def _is_8bit_rgb_png(data: bytes) -> bool:
    # The IHDR chunk sits at a fixed offset: bit depth at byte 24, colour type at 25 (2 = RGB).
    # Pillow shows 16-bit RGB PNGs as mode "RGB" too, so the header is the only reliable test.
    return len(data) > 25 and data[24] == 8 and data[25] == 2


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I"):
        # 16-bit (or 32-bit) grey: map the nominal 16-bit range to 8 bits as tf.io.decode_png does.
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 65535) / 257.0
        return Image.fromarray(np.round(grey).astype(np.uint8), mode="L").convert("RGB")
    if img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float64), 0, 255)
        return Image.fromarray(np.round(grey).astype(np.uint8), mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info
    ):
        # Transparent parts become black, the background of an MRI slice.
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def read_rgb_image(
    path: Union[str, pathlib.Path], max_pixels: int = DEFAULT_MAX_PIXELS
) -> StoredImage:
    """Reads an image file as 8-bit RGB, keeping the original bytes when they already are.

    An 8-bit 3-channel JPEG or PNG is returned unchanged (no needless re-encoding); grayscale,
    RGBA, palette, CMYK, 16-bit and other inputs are converted to 8-bit RGB and encoded as PNG.
    The whole image is decoded once, so truncated files are caught here rather than at training.

    Args:
      path: The image file.
      max_pixels: Largest accepted width * height (see check_image_header).

    Returns:
      A StoredImage.

    Raises:
      CorruptImageError: Empty, not an image, truncated, or larger than `max_pixels`.
    """
    data = pathlib.Path(path).read_bytes()
    if not data:
        raise CorruptImageError("empty file (0 bytes)")
    check_image_header(data, max_pixels=max_pixels)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # Forces a full decode: a truncated file raises OSError here.
            if img.format == "JPEG" and img.mode == "RGB":
                return StoredImage(data=data, format="jpeg", reencoded=False)
            if img.format == "PNG" and img.mode == "RGB" and _is_8bit_rgb_png(data):
                return StoredImage(data=data, format="png", reencoded=False)
            rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(f"cannot decode the image ({e})") from e
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    return StoredImage(data=buffer.getvalue(), format="png", reencoded=True)
