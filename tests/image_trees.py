"""Test helper: tiny image files and Kaggle-layout trees (Training/<class>/..., Testing/...).

Two kinds of tree: write_tree's images tell their class and index by their pixels (for pipelines
that must keep labels and order); write_messy_tree holds every file the readers must handle
(aliases, CMYK, 16-bit, corrupt, duplicate, junk) and write_simple_tree one JPEG per class.
"""

import io
import pathlib
import struct
import zlib

import numpy as np
from PIL import Image

CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")
# Saturated, far-apart colours: JPEG and resizing cannot turn one into another.
# The first four are the Kaggle classes'; trees with other classes take the first N in label order.
CLASS_COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
                          (0, 255, 255), (255, 255, 255), (0, 0, 0)], dtype=np.uint8)
SIZE = 16  # Pixels of the single image files; tiny so that the tests stay fast.


def write_tree(root, *, train_per_class=6, test_per_class=2, size=32, fmt="png",
               class_names=CLASS_NAMES):
    """Writes root/Training/<class>/*.{png,jpg} and root/Testing/...: the top half of each image
    has its class colour, the bottom half a grey level that numbers the image within its split.

    Args:
      class_names: the class folders (up to 8), in label order; label i gets CLASS_COLOURS[i].

    Returns:
      root as a Path.
    """
    root = pathlib.Path(root)
    for folder, per_class in (("Training", train_per_class), ("Testing", test_per_class)):
        index = 0
        for label, name in enumerate(class_names):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                image = np.zeros((size, size, 3), dtype=np.uint8)
                image[: size // 2] = CLASS_COLOURS[label]
                image[size // 2:] = 8 * index + 4
                Image.fromarray(image).save(root / folder / name / f"{folder[:2]}-{i:03d}.{fmt}")
                index += 1
    return root


def labels_from_pixels(images):
    """Recovers the class of each uint8 image [N, H, W, 3] from its top-half colour."""
    images = np.asarray(images, dtype=np.float32)
    top = images[:, 1: images.shape[1] // 2 - 1, 1:-1].mean(axis=(1, 2))
    distances = ((top[:, None, :] - CLASS_COLOURS[None].astype(np.float32)) ** 2).sum(-1)
    return distances.argmin(axis=1)


def ids_from_pixels(images):
    """Recovers the index of each uint8 image [N, H, W, 3] from its bottom-half grey level."""
    images = np.asarray(images, dtype=np.float32)
    bottom = images[:, images.shape[1] // 2 + 1: -1, 1:-1].mean(axis=(1, 2, 3))
    return np.round((bottom - 4) / 8).astype(int)


def pixels(seed: int, size: int = SIZE) -> np.ndarray:
    """A random uint8 RGB image; different seeds give different content (and sha256)."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def jpeg_bytes(seed: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed)).convert(mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def raw_png(
    width: int, height: int, *, bit_depth: int, color_type: int, rows: bytes = b""
) -> bytes:
    """A PNG assembled chunk by chunk, for what Pillow cannot write (16-bit RGB, bogus sizes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(rows)) if rows else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body + chunk(b"IEND", b"")


def rgb48_png(value: int) -> bytes:
    """A 16-bit-per-channel RGB PNG whose every sample is `value` (0..65535)."""
    row = b"\x00" + struct.pack(">H", value) * 3 * SIZE  # Filter byte 0, then R, G, B per pixel.
    return raw_png(SIZE, SIZE, bit_depth=16, color_type=2, rows=row * SIZE)


def gray16_png(value: int) -> bytes:
    return png_bytes(Image.fromarray(np.full((SIZE, SIZE), value, dtype=np.uint16)))


def rgba_png(seed: int) -> bytes:
    """RGBA, fully transparent on the left half (which must come out black)."""
    rgba = np.concatenate([pixels(seed), np.full((SIZE, SIZE, 1), 255, np.uint8)], axis=2)
    rgba[:, : SIZE // 2, 3] = 0
    return png_bytes(Image.fromarray(rgba, mode="RGBA"))


def truncated_jpeg(seed: int) -> bytes:
    """A JPEG cut inside its pixel data: the header is intact, so only a full decode notices."""
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed, size=64)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) * 3 // 4]


def bad_crc_png(seed: int) -> bytes:
    """A PNG whose pixel data fails its checksum: the header is intact, only a decode notices."""
    data = bytearray(png_bytes(Image.fromarray(pixels(seed))))
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4:idat], "big")
    data[idat + 4 + length] ^= 0xFF  # The first byte of the IDAT chunk's CRC.
    return bytes(data)


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_messy_tree(root: pathlib.Path) -> dict:
    """Writes a Kaggle tree holding every special case; returns what a correct reader must find.

    Returns:
      {"train": {relpath: label}, "test": {relpath: label}, "corrupt": [relpaths],
       "leaked": [test relpaths that copy a train image], "train_duplicates": [train relpaths]}
    """
    train, test = root / "Training", root / "Testing"
    expected_train = {
        # _tumor aliases of older dataset versions, mixed with the current names.
        "Training/glioma_tumor/rgb.jpg": write(train / "glioma_tumor/rgb.jpg", jpeg_bytes(1)),
        "Training/glioma_tumor/gray.png": write(
            train / "glioma_tumor/gray.png", png_bytes(Image.fromarray(pixels(2)[:, :, 0]))
        ),
        "Training/meningioma/rgba.png": write(train / "meningioma/rgba.png", rgba_png(3)),
        "Training/meningioma/cmyk.jpg": write(train / "meningioma/cmyk.jpg", jpeg_bytes(4, "CMYK")),
        "Training/no_tumor/gray16.png": write(train / "no_tumor/gray16.png", gray16_png(65535)),
        "Training/no_tumor/palette.png": write(
            train / "no_tumor/palette.png", png_bytes(Image.fromarray(pixels(5)).convert("P"))
        ),
        "Training/pituitary_tumor/rgb48.png": write(
            train / "pituitary_tumor/rgb48.png", rgb48_png(257 * 200)
        ),
        "Training/pituitary_tumor/rgb.png": write(
            train / "pituitary_tumor/rgb.png", png_bytes(Image.fromarray(pixels(6)))
        ),
        # An exact copy within the split, for the dedup config.
        "Training/pituitary_tumor/rgb_copy.png": write(
            train / "pituitary_tumor/rgb_copy.png", png_bytes(Image.fromarray(pixels(6)))
        ),
    }
    labels = {"glioma_tumor": 0, "meningioma": 1, "no_tumor": 2, "pituitary_tumor": 3}
    corrupt = [
        write(train / "pituitary_tumor/text.jpg", b"this is a text file, not a JPEG\n"),
        write(train / "pituitary_tumor/zero.jpg", b""),
        write(test / "glioma/truncated.jpg", truncated_jpeg(7)),
        write(test / "notumor/bad_crc.png", bad_crc_png(8)),
    ]
    expected_test = {}
    for label, name in enumerate(CLASS_NAMES):
        expected_test[f"Testing/{name}/Te-{label}.jpg"] = write(
            test / name / f"Te-{label}.jpg", jpeg_bytes(10 + label)
        )
    # A test image that is byte-for-byte a train image, as the published dataset has 189 of.
    write(test / "glioma/leaked.jpg", jpeg_bytes(1))
    # Junk that must be ignored silently.
    write(root / ".DS_Store", b"\x00\x00\x00\x01Bud1")
    write(train / "Thumbs.db", b"junk")
    write(train / "glioma_tumor/.hidden.jpg", jpeg_bytes(20))
    write(train / "glioma_tumor/notes.txt", b"a non-image file")
    write(test / "meningioma/.ipynb_checkpoints/Te-me-checkpoint.jpg", jpeg_bytes(21))
    write(root / "README.md", b"# notes\n")
    return {
        "train": {rel: labels[rel.split("/")[1]] for rel in expected_train},
        "test": {
            **{rel: label for label, rel in enumerate(expected_test)},
            "Testing/glioma/leaked.jpg": 0,
        },
        "corrupt": sorted(p.relative_to(root).as_posix() for p in corrupt),
        "leaked": ["Testing/glioma/leaked.jpg"],
        "train_duplicates": ["Training/pituitary_tumor/rgb_copy.png"],
    }


def write_simple_tree(
    root: pathlib.Path,
    *,
    train: str = "Training",
    test: str = "Testing",
    classes=CLASS_NAMES,
) -> None:
    """One valid JPEG per class and split, under the given folder names."""
    for label, name in enumerate(classes):
        write(root / train / name / f"tr{label}.jpg", jpeg_bytes(100 + label))
        write(root / test / name / f"te{label}.jpg", jpeg_bytes(200 + label))


def slice_like_jpeg(height: int, width: int, *, grey: bool, seed: int = 0,
                    quality: int = 90) -> bytes:
    """A JPEG shaped like an MRI slice (black background, a textured bright ellipse with darker
    blobs; neither flat nor noise), at a real size such as 512 x 512 or 284 x 324."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = height * rng.uniform(0.45, 0.55), width * rng.uniform(0.45, 0.55)
    inside = ((y - cy) / (0.4 * height)) ** 2 + ((x - cx) / (0.35 * width)) ** 2 < 1
    texture = 60 * np.sin(x / rng.uniform(3, 9)) * np.cos(y / rng.uniform(4, 11))
    image = np.where(inside, 150 + texture + rng.normal(0, 12, (height, width)), 0)
    for _ in range(4):  # darker structures
        by, bx, r = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width, rng.uniform(8, 30)
        image[(y - by) ** 2 + (x - bx) ** 2 < r ** 2] *= 0.4
    channels = [image] if grey else [image, image * 0.9 + 10 * inside, image * 0.8]
    pixels_ = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels_[..., 0] if grey else pixels_).save(buffer, format="JPEG",
                                                             quality=quality)
    return buffer.getvalue()


def _entropy_start(data: bytes) -> int:
    """Offset of a baseline JPEG's entropy-coded data (right after its start-of-scan header)."""
    start = data.index(b"\xff\xda")
    return start + 2 + int.from_bytes(data[start + 2:start + 4], "big")


def jpeg_cut_with_end_marker(data: bytes, fraction: float = 0.5) -> bytes:
    """`data` cut `fraction` of the way into its entropy data, its end marker put back."""
    start = _entropy_start(data)
    return data[:start + int((len(data) - start) * fraction)] + b"\xff\xd9"


def jpeg_zeroed_middle(data: bytes, count: int = 2000) -> bytes:
    """`data` with `count` bytes of its entropy data overwritten by zeros, in the middle."""
    start = _entropy_start(data)
    middle = (start + len(data)) // 2 - count // 2
    return data[:middle] + bytes(count) + data[middle + count:]


def jpeg_with_bytes_overwritten(data: bytes, fraction: float, count: int = 4) -> bytes:
    """`data` with `count` bytes zeroed `fraction` of the way into its entropy data: libjpeg
    loses its place there, decodes garbled blocks to the end and finds bytes left over before
    the end marker ("Corrupt JPEG data: N extraneous bytes before marker 0xd9")."""
    at = _entropy_start(data) + int((len(data) - _entropy_start(data)) * fraction)
    return data[:at] + bytes(count) + data[at + count:]


def jpeg_claiming_size(data: bytes, height: int, width: int) -> bytes:
    """`data` with its frame header (SOF0/1/2) declaring height x width pixels."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
        at = data.find(marker)
        if at > 0:
            return (data[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big")
                    + data[at + 9:])
    raise ValueError("no frame header")


def damaged_jpegs() -> dict[str, bytes]:
    """The JPEGs libjpeg decodes only with a corrupt-data warning, by name: a cut file with its
    end marker put back, one with zeros over its middle, a 6 KB file claiming 8000 x 8000."""
    slice_ = slice_like_jpeg(512, 512, grey=True, seed=11)
    small = slice_like_jpeg(160, 160, grey=True, seed=12, quality=90)
    return {"cut_with_end_marker": jpeg_cut_with_end_marker(slice_),
            "zeros_in_the_middle": jpeg_zeroed_middle(slice_),
            "6kb_claiming_8000x8000": jpeg_claiming_size(small, 8000, 8000)}


def garbled_jpegs() -> dict[str, bytes]:
    """JPEGs whose entropy data is garbled but complete, by name: libjpeg decodes every block
    (wrong ones after the damage) and warns of bytes left over before the end marker, so no
    look at the decoded pixels tells them apart from an intact file."""
    colour = slice_like_jpeg(512, 512, grey=False, seed=2)
    return {"4_zero_bytes_early": jpeg_with_bytes_overwritten(colour, 0.2),
            "300_zero_bytes_early": jpeg_with_bytes_overwritten(colour, 0.2, count=300),
            "4_zero_bytes_late": jpeg_with_bytes_overwritten(
                slice_like_jpeg(512, 512, grey=True, seed=1), 0.8)}
