"""The Kaggle Brain Tumor MRI folder tree: split folders, class folders, junk, listing the files."""

import dataclasses
import os
import pathlib
from typing import Union

from absl import logging

from mri_tfdata.core.class_names import problem as class_names_problem
from mri_tfdata.core.errors import UserError
from mri_tfdata.data import dicom

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

# Windows and macOS junk that is not hidden by a leading dot.
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx"})


@dataclasses.dataclass(frozen=True)
class LabeledFile:
    """One image file of a split.

    Attributes:
      path: Absolute path of the file.
      relpath: POSIX path relative to the folder that holds the split folders,
        e.g. "Training/glioma/Tr-gl_0010.jpg"; stable across machines, so usable as a key.
      label: Index into the class names of the tree (see infer_class_names).
    """

    path: pathlib.Path
    relpath: str
    label: int


def is_junk(path: pathlib.Path) -> bool:
    """True for hidden files and folders (.DS_Store, .ipynb_checkpoints/), OS junk (Thumbs.db)."""
    return path.name.startswith(".") or path.name.lower() in _JUNK_NAMES


def _first_visit(path: pathlib.Path, seen: set) -> bool:
    """Adds the file or folder behind `path` to `seen`; False if it was there already."""
    try:
        info = os.stat(path)
    except OSError:  # A dangling link: listed, so that reading it reports the problem by name.
        return True
    identity = (info.st_dev, info.st_ino)
    if identity in seen:
        return False
    seen.add(identity)
    return True


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


def class_label(folder_name: str, class_names=CLASS_NAMES) -> int:
    """Returns the label of a class folder name among `class_names`.

    With the Kaggle class names the older `_tumor` aliases are accepted too, in any letter case;
    other class names match the folder name exactly, as Keras' flow_from_directory matches them.

    Raises:
      UserError: The name is not among the classes; the message lists the accepted names.
    """
    class_names = tuple(class_names)
    if class_names == CLASS_NAMES:
        label = CLASS_ALIASES.get(folder_name.lower())
        accepted = tuple(CLASS_ALIASES)
    else:
        label = class_names.index(folder_name) if folder_name in class_names else None
        accepted = class_names
    if label is None:
        raise UserError(
            f"Unknown class folder {folder_name!r}; the accepted class folder names are "
            f"{', '.join(accepted)}. Rename or move that folder out of the dataset, or list it "
            "in the classes (--classes)."
        )
    return label


def class_folders(split_dir: Union[str, pathlib.Path]) -> list[str]:
    """The names of the visible class folders of a split folder, sorted."""
    return [p.name for p in _visible_children(pathlib.Path(split_dir)) if p.is_dir()]


def infer_class_names(train_dir: Union[str, pathlib.Path], class_names=None) -> tuple:
    """The classes of a tree, in label order, from its training split folder.

    As Keras' flow_from_directory: the class folders of `train_dir`, sorted. Folders that are all
    Kaggle class names or their older aliases give the Kaggle classes (CLASS_NAMES, in their
    order), so that a Kaggle tree keeps its labels whichever of its classes are present.

    Args:
      train_dir: The training split folder.
      class_names: The classes and their order, fixed by the user; None to infer them.

    Raises:
      UserError: `class_names` is given and a class folder is not among them (the message names
        it), `train_dir` holds no class folder, or the classes cannot name a classifier's outputs
        (core.class_names: e.g. a folder name holding a newline), refused here before any
        training rather than when the model is saved.
    """
    folders = class_folders(train_dir)
    if class_names is not None:
        class_names = tuple(class_names)
        for folder in folders:
            class_label(folder, class_names)
    elif not folders:
        raise UserError(f"The training folder {train_dir} holds no class folder; put the images "
                        f"in {train_dir}/<class>/*.jpg, one folder per class.")
    elif all(folder.lower() in CLASS_ALIASES for folder in folders):
        class_names = CLASS_NAMES
    else:
        class_names = tuple(folders)
    problem = class_names_problem(class_names)
    if problem:
        raise UserError(f"The classes of {train_dir} cannot name a classifier's outputs: "
                        f"{problem}. Rename the class folders, or list the classes "
                        "(--classes).")
    return class_names


def is_image_file(path: pathlib.Path) -> bool:
    """A .jpg/.jpeg/.png file, or a DICOM file (.dcm, or the DICM marker: data.dicom)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or dicom.is_dicom_path(path)


def _image_files(folder: pathlib.Path, seen: set):
    """Yields the image files (is_image_file) under `folder`, nested folders too, never entering
    hidden ones, and no file or folder whose (device, inode) is in `seen` (which it extends)."""
    stack = [folder]
    while stack:
        current = stack.pop()
        if not _first_visit(current, seen):
            logging.warning("Ignoring %r: a link to a folder already listed.", str(current))
            continue
        for path in _visible_children(current):
            if path.is_dir():
                stack.append(path)
            elif is_image_file(path) and _first_visit(path, seen):
                yield path


def list_images(folder: Union[str, pathlib.Path]) -> list[pathlib.Path]:
    """The image files under `folder`, recursively and sorted, junk and links skipped as by
    list_examples (for predicting on any folder, whatever its layout)."""
    return sorted(_image_files(pathlib.Path(folder), set()))


def list_examples(split_dir: Union[str, pathlib.Path],
                  class_names=CLASS_NAMES) -> list[LabeledFile]:
    """Lists the image files of one split folder, labelled by their class folder.

    Hidden files and folders, OS junk and files that are not .jpg/.jpeg/.png or DICOM are skipped, and no
    file or folder is listed twice (symlink loops, hard or soft links to the same file); the files
    are not opened here (see mri_tfdata.data.images), so corrupt images are still listed.

    Args:
      split_dir: A split folder as returned by find_split_dirs.
      class_names: The classes in label order (see infer_class_names); a class folder not among
        them is refused.

    Returns:
      The files sorted by relpath (deterministic on every filesystem).

    Raises:
      UserError: A class folder has an unknown name, or the split holds no image at all.
    """
    split_dir = pathlib.Path(split_dir)
    examples = []
    # (device, inode) of every folder entered and file listed: a symlink loop or a second link to
    # the same file would otherwise list files many times, and let slices of one split overlap.
    seen = set()
    for child in _visible_children(split_dir):
        if not child.is_dir():
            if is_image_file(child):
                logging.warning("Ignoring %r: images must sit in a class folder.", str(child))
            continue
        try:
            label = class_label(child.name, class_names)
        except UserError:
            raise UserError(
                f"{split_dir} holds the class folder {child.name!r}, which is not among the "
                f"classes {', '.join(class_names)} (those of the training split, or --classes"
                f"{'; older aliases: ' + ', '.join(list(CLASS_ALIASES)[4:]) if tuple(class_names) == CLASS_NAMES else ''}). "
                "Move that folder out of the dataset, add it to the training split, or list it "
                "in --classes."
            ) from None
        for path in _image_files(child, seen):
            relpath = path.relative_to(split_dir.parent).as_posix()
            examples.append(LabeledFile(path=path, relpath=relpath, label=label))
    if not examples:
        raise UserError(
            f"The split folder {split_dir} holds no .jpg/.jpeg/.png image (or DICOM file) in a "
            f"class folder ({', '.join(class_names)}). {DOWNLOAD_HINT}"
        )
    return sorted(examples, key=lambda e: e.relpath)
