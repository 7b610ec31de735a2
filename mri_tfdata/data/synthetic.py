"""Deterministic synthetic MRI-like images in the Kaggle tree, the default needing no download."""

import json
import os
import pathlib
import shutil
import tempfile
from typing import Union

import numpy as np
from absl import logging
from PIL import Image

from mri_tfdata.core import caches
from mri_tfdata.core.atomic import current_umask, disk_error
from mri_tfdata.core.errors import UserError
from mri_tfdata.data.kaggle_layout import CLASS_NAMES

# Hidden, so the Kaggle-tree reader ignores it; written last, so its presence means "complete".
MARKER_NAME = ".synthetic-complete.json"
_FILE_PREFIX = {"glioma": "gl", "meningioma": "me", "notumor": "no", "pituitary": "pi"}
_SPLITS = (("Training", "Tr"), ("Testing", "Te"))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))


def _blob(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, radius: float, edge: float
) -> np.ndarray:
    """A disc of `radius` around (cx, cy) with a soft edge `edge` wide, values in [0, 1]."""
    distance = np.hypot(x - cx, y - cy)
    return 1.0 / (1.0 + np.exp((distance - radius) / edge))


def _lesion(
    class_name: str, hx: np.ndarray, hy: np.ndarray, edge: float, rng: np.random.Generator
) -> np.ndarray:
    """The intensity a class adds to the brain (zero for notumor), in head coordinates hx, hy."""
    # Lesion contrast varies from subtle to obvious so that the task is learnable but not trivial.
    contrast = rng.uniform(0.3, 0.6)
    if class_name == "glioma":
        # An irregular, heterogeneous mass anywhere inside the brain: a cluster of soft blobs.
        r, theta = rng.uniform(0.15, 0.5), rng.uniform(0, 2 * np.pi)
        cx, cy = r * np.cos(theta), r * np.sin(theta)
        mass = np.zeros_like(hx)
        for _ in range(rng.integers(3, 6)):
            mass = np.maximum(
                mass,
                _blob(
                    hx,
                    hy,
                    cx + rng.normal(0, 0.08),
                    cy + rng.normal(0, 0.08),
                    rng.uniform(0.10, 0.20),
                    0.03,
                ),
            )
        texture = np.clip(0.9 + 0.4 * _smooth_noise(rng, hx.shape[0], 24), 0.2, None)
        return mass * contrast * texture
    if class_name == "meningioma":
        # A bright, homogeneous, well-defined round mass pressed against the inner skull.
        theta, size = rng.uniform(0, 2 * np.pi), rng.uniform(0.12, 0.22)
        r = 0.86 - 0.6 * size
        return _blob(hx, hy, r * np.cos(theta), r * np.sin(theta), size, edge) * contrast
    if class_name == "pituitary":
        # A small bright blob at the bottom centre of the brain (the sella turcica).
        cx, cy = rng.normal(0, 0.03), rng.uniform(0.50, 0.62)
        return _blob(hx, hy, cx, cy, rng.uniform(0.08, 0.13), 0.015) * contrast
    return np.zeros_like(hx)


def draw_image(label: int, *, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draws one MRI-like axial slice: skull, textured brain, ventricles, a class-specific lesion.

    Args:
      label: Index into CLASS_NAMES; decides the lesion (notumor has none).
      image_size: Width and height in pixels.
      rng: The random source; the same state gives the same image.

    Returns:
      uint8 array [image_size, image_size, 3], grey (R = G = B) like the Kaggle JPEGs.
    """
    s = image_size
    # Normalised coordinates in the head's own frame (jittered centre, size and tilt), so the
    # lesion rules of _lesion ("at the edge", "bottom centre") hold whatever the head pose.
    axis = np.linspace(-1, 1, s, dtype=np.float32)
    grid_x, grid_y = np.meshgrid(axis, axis)
    angle = rng.uniform(-0.2, 0.2)
    gx, gy = grid_x - rng.uniform(-0.05, 0.05), grid_y - rng.uniform(-0.05, 0.05)
    hx = (np.cos(angle) * gx + np.sin(angle) * gy) / rng.uniform(0.80, 0.90)
    hy = (-np.sin(angle) * gx + np.cos(angle) * gy) / rng.uniform(0.88, 0.96)

    edge = 2.0 / s
    head = _blob(hx, hy, 0, 0, 1.0, edge)
    brain = _blob(hx, hy, 0, 0, 0.86, edge)
    skull = head - _blob(hx, hy, 0, 0, 0.91, edge)
    tissue = (
        rng.uniform(0.32, 0.45) + 0.06 * _smooth_noise(rng, s, 6) + 0.03 * _smooth_noise(rng, s, 20)
    )
    img = 0.85 * skull + brain * tissue
    # Two dark lateral ventricles near the midline, present in every class.
    spread = rng.uniform(0.08, 0.14)
    for side in (-1, 1):
        ventricle = _blob(hx / 0.45, hy / 1.0, side * spread / 0.45, -0.05, 0.28, 0.05)
        img -= brain * ventricle * rng.uniform(0.15, 0.25)

    # The lesion has its own random stream, drawn from the main one whatever the class, so that the
    # same seed gives the same head and scanner for every label: the lesion is the only difference.
    lesion_rng = np.random.default_rng(rng.integers(2**63))
    img += brain * _lesion(CLASS_NAMES[label], hx, hy, edge, lesion_rng)

    # Scanner variation: gain, gamma and noise, plus bright vessel specks that every class has.
    for _ in range(rng.integers(0, 4)):
        img += (
            brain * _blob(hx, hy, rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6), 0.015, edge) * 0.2
        )
    img = np.clip(img * rng.uniform(0.85, 1.15), 0, 1) ** rng.uniform(0.8, 1.25)
    img = img * head + rng.normal(0, rng.uniform(0.01, 0.04), img.shape)
    grey = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _parameters(**kwargs) -> dict:
    # A tree drawn by another format version (caches.FORMAT_VERSION) is never reused silently.
    return {"format_version": caches.FORMAT_VERSION, **kwargs}


def _check_arguments(train_per_class: int, test_per_class: int, image_size: int,
                     leaked_test_images: int) -> None:
    if train_per_class < 1 or test_per_class < 1:
        raise ValueError(
            f"need at least one image per class, got train_per_class={train_per_class}, "
            f"test_per_class={test_per_class}"
        )
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small to draw a head; use 16 or more")
    if not 0 <= leaked_test_images <= train_per_class * len(CLASS_NAMES):
        raise ValueError(
            f"leaked_test_images={leaked_test_images} must be between 0 and the "
            f"{train_per_class * len(CLASS_NAMES)} training images"
        )


def _already_there(root: pathlib.Path, params: dict) -> bool:
    """True when `root` holds this very dataset; raises when it holds anything else."""
    marker = root / MARKER_NAME
    if marker.is_file():
        made_with = json.loads(marker.read_text())
        if made_with == params:
            logging.info("Reusing the synthetic dataset in %s.", root)
            return True
        raise UserError(
            f"{root} holds a synthetic dataset made with other settings ({made_with}); pass "
            "another "
            f"output folder, or delete {root} to regenerate it with {params}."
        )
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise UserError(
            f"{root} already exists and is not a synthetic dataset; it is not overwritten. "
            "Pass a new or empty folder."
        )
    return False


def _publish(staging: pathlib.Path, root: pathlib.Path, params: dict) -> None:
    """Renames the finished tree into place; another process publishing it first is fine."""
    try:
        # Renaming over an empty folder works; over a full one it fails, and then another process
        # (e.g. the other worker of a cluster) has just published the same tree, or another one.
        os.rename(staging, root)
    except OSError:
        if not _already_there(root, params):
            raise


def write_synthetic_dataset(
    root: Union[str, pathlib.Path],
    *,
    train_per_class: int = 40,
    test_per_class: int = 10,
    image_size: int = 128,
    seed: int = 0,
    leaked_test_images: int = 0,
) -> pathlib.Path:
    """Writes the synthetic dataset as root/Training/<class>/*.jpg and root/Testing/<class>/*.jpg.

    The same arguments always give byte-identical files (each image has its own seeded random
    stream). A complete tree made with the same arguments is reused as it is; the tree is built
    in a hidden sibling folder and renamed into place, so `root` is never left half written.

    Args:
      root: Where to write; must not exist, be an empty folder or hold this very dataset.
      train_per_class: Images per class in Training/.
      test_per_class: Images per class in Testing/.
      image_size: Width and height of the JPEGs.
      seed: Changes every image.
      leaked_test_images: Copies this many Training images into Testing/ (spread over the classes)
        to mimic the train/test leakage of the published dataset; for tests of de-duplication.

    Returns:
      `root` as a Path.

    Raises:
      ValueError: A count or the size is out of range.
      UserError: `root` holds something else, which is never overwritten.
    """
    _check_arguments(train_per_class, test_per_class, image_size, leaked_test_images)
    root = pathlib.Path(root).expanduser()
    params = _parameters(
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        image_size=image_size,
        seed=seed,
        leaked_test_images=leaked_test_images,
    )
    if _already_there(root, params):
        return root
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
        # mkdtemp's folder is private; the dataset it becomes is as readable as any other.
        staging.chmod(0o777 & ~current_umask())
    except OSError as e:
        raise disk_error(root.parent, e, what="create the synthetic dataset folder") from None
    try:
        _write_tree(staging, params)
        (staging / MARKER_NAME).write_text(json.dumps(params, sort_keys=True) + "\n")
        _publish(staging, root, params)
    except OSError as e:
        raise disk_error(root, e, what="write the synthetic dataset to") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logging.info("Wrote the synthetic dataset to %s (%s).", root, params)
    return root


def _write_tree(root: pathlib.Path, params: dict) -> None:
    counts = {"Training": params["train_per_class"], "Testing": params["test_per_class"]}
    for split_index, (split, prefix) in enumerate(_SPLITS):
        for label, class_name in enumerate(CLASS_NAMES):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for index in range(counts[split]):
                rng = np.random.default_rng([params["seed"], split_index, label, index])
                pixels = draw_image(label, image_size=params["image_size"], rng=rng)
                path = folder / f"{prefix}-{_FILE_PREFIX[class_name]}_{index:04d}.jpg"
                Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    # Leaked copies take the next Testing numbers of their class, as in the published dataset.
    for leak in range(params["leaked_test_images"]):
        class_name = CLASS_NAMES[leak % len(CLASS_NAMES)]
        train_index = leak // len(CLASS_NAMES)
        test_index = counts["Testing"] + train_index
        abbreviation = _FILE_PREFIX[class_name]
        shutil.copyfile(
            root / "Training" / class_name / f"Tr-{abbreviation}_{train_index:04d}.jpg",
            root / "Testing" / class_name / f"Te-{abbreviation}_{test_index:04d}.jpg",
        )
