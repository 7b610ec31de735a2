"""Classifies image files and folders: `mri-predict --model=runs/demo/model.keras scans/ a.jpg`.

Folders are searched recursively for .jpg, .jpeg, .png and DICOM files, skipping junk as the
dataset builder does (hidden files and folders, Thumbs.db, ...). Each frame of a multi-frame
DICOM file is classified on its own, as `path#N`; --dicom_window replaces the files' own
display window. With --series_summary each series (DICOM SeriesInstanceUID, else the folder)
also gets one line: the class of highest mean probability and each class's votes. Each file gets one JSON line on stdout,
{"file", "class", "probabilities": {class: p}}, or a line or row of --output (.jsonl or .csv). A
file that cannot be read gets {"file", "error"} instead, saying why in words; the other files are
still classified, and the exit status is 1. With --gradcam=DIR each image also gets an overlay PNG
in DIR showing where the model found its evidence for the predicted class, named in its result as
"gradcam" (or "gradcam_error" saying why it could not be drawn; the exit status is then 1 too).
A model calibrated by training (a validation split) also gives each image its prediction set at
the first --conformal_alphas level (90% by default): "prediction_set" (the classes that, together,
hold the true class 90% of the time), "prediction_set_coverage" (0.9) and "refer" (true when the
set is not one class: the image needs a human read); see docs/evaluation.md.
"""

from __future__ import annotations

import csv
import io
import json
import pathlib
import sys
from collections.abc import Iterator, Sequence

from mri_tfdata.cli import console

console.setup_command(sys.argv)  # Before TensorFlow loads: a command starts quietly.

from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
from absl import flags, logging  # noqa: E402

from mri_tfdata.cli import runner, shared_flags  # noqa: E402
from mri_tfdata.cli.runner import require  # noqa: E402
from mri_tfdata.core import atomic  # noqa: E402
from mri_tfdata.core.errors import UserError  # noqa: E402
from mri_tfdata.data import dicom, kaggle_layout  # noqa: E402

if TYPE_CHECKING:
    from mri_tfdata.serving import model_file

# The model, image and Grad-CAM modules import TensorFlow: the functions below import them when
# they run, so that --help and flag errors answer without loading it.


def find_images(paths: Sequence) -> list[pathlib.Path]:
    """The files named and the image files in the folders named (recursively), in order.

    A folder without images stays in the list as itself, so that it gets an error line.
    """
    found = []
    for path in map(pathlib.Path, paths):
        found.extend((kaggle_layout.list_images(path) or [path]) if path.is_dir() else [path])
    return found


def expand_frames(files: Sequence) -> list:
    """`files` with each multi-frame DICOM file replaced by its frames, `path#1` ... `path#N`
    (a file whose header cannot be read stays as it is, to get its error line)."""
    expanded = []
    for path in files:
        frames = 1
        if pathlib.Path(path).is_file() and dicom.is_dicom_path(path):
            try:
                frames = dicom.frame_count(path)
            except (dicom.DicomError, OSError):
                pass
        expanded += [path] if frames == 1 else [
            pathlib.Path(dicom.frame_key(path, i, frames)) for i in range(frames)]
    return expanded


def _read(path: pathlib.Path, image_size: int,
          dicom_window: dicom.Window | None = None) -> np.ndarray | str:
    """The image as the model takes it, or why it cannot be read, in words."""
    from mri_tfdata.data import images
    from mri_tfdata.serving import model_file

    if path.is_dir():
        return (f"a folder with no {', '.join(kaggle_layout.IMAGE_SUFFIXES)} or DICOM file "
                "in it")
    try:
        return model_file.load_image(path, image_size=image_size, dicom_window=dicom_window)
    except images.CorruptImageError as e:
        return str(e)
    except OSError as e:
        return f"cannot read it ({e.strerror or e})"


def prediction_set(saved: model_file.SavedClassifier, probabilities) -> dict:
    """{"prediction_set": [class names], "prediction_set_coverage", "refer"} of one image at the
    model's primary conformal level, or {} for a model without thresholds."""
    from mri_tfdata.evaluation import conformal

    key = conformal.primary_alpha(saved.conformal)
    if key is None:
        return {}
    members = conformal.prediction_sets(np.asarray(probabilities)[None],
                                        saved.conformal["alphas"][key],
                                        saved.conformal["score"])[0]
    return {"prediction_set": [n for n, kept in zip(saved.class_names, members) if kept],
            "prediction_set_coverage": float(conformal.level_name(float(key))),
            "refer": bool(members.sum() != 1)}


def overlay_paths(files: Sequence, gradcam_dir) -> list[pathlib.Path]:
    """Where classify_files writes the Grad-CAM overlay of each file: one distinct PNG each."""
    from mri_tfdata.evaluation import gradcam

    return [pathlib.Path(gradcam_dir) / name for name in gradcam.overlay_names(files)]


def classify_files(saved: model_file.SavedClassifier, files: Sequence,
                   *, batch_size: int = 32, gradcam_dir=None,
                   dicom_window: dicom.Window | None = None) -> Iterator[dict]:
    """Classifies image files, `batch_size` at a time; yields one result per file, in order.

    Args:
      saved: the classifier, from model_file.load_classifier.
      files: paths of image files.
      batch_size: images per forward pass.
      gradcam_dir: an existing folder for the Grad-CAM overlay of every readable image, at
        overlay_paths (replaced if there), explaining its predicted class; None for none.
      dicom_window: the display window of DICOM files, replacing their own; None for theirs.

    Yields:
      {"file", "class", "probabilities": {class name: p}} (and prediction_set's keys for a
      calibrated model), or {"file", "error"} for a file
      that cannot be read (not an image, corrupt, absurdly large, missing). With a gradcam_dir,
      a classified file's result also holds "gradcam" (the PNG written), or "gradcam_error"
      saying why none was.

    Raises:
      UserError: with a gradcam_dir, the model is not one Grad-CAM can read.
    """
    from mri_tfdata.evaluation import gradcam

    explainer = gradcam.Explainer(saved.model) if gradcam_dir is not None else None
    overlays = overlay_paths(files, gradcam_dir) if gradcam_dir is not None else None
    for start in range(0, len(files), batch_size):
        chunk = [pathlib.Path(f) for f in files[start:start + batch_size]]
        read = [_read(path, saved.image_size, dicom_window) for path in chunk]
        good = [i for i, image in enumerate(read) if not isinstance(image, str)]
        batch = np.stack([read[i] for i in good]) if good else None
        probabilities = dict(zip(good, saved.model.predict_on_batch(batch) if good else []))
        drawn = {}
        if explainer is not None and good:
            # The overlays explain the classes reported here, the argmax of these probabilities.
            drawn = dict(zip(good, gradcam.save_overlays(
                explainer, batch, files=[chunk[i] for i in good],
                out_paths=[overlays[start + i] for i in good], class_names=saved.class_names,
                class_index=[int(np.argmax(probabilities[i])) for i in good])))
        for i, (path, image) in enumerate(zip(chunk, read)):
            if isinstance(image, str):
                logging.warning("Cannot classify %s: %s", path, image)
                yield {"file": str(path), "error": image}
                continue
            p = probabilities[i]
            result = {"file": str(path), "class": saved.class_names[int(np.argmax(p))],
                      "probabilities": {name: round(float(v), 6)
                                        for name, v in zip(saved.class_names, p)},
                      **prediction_set(saved, p)}
            if isinstance(drawn.get(i), pathlib.Path):
                result["gradcam"] = str(drawn[i])
            elif i in drawn:
                logging.warning("No Grad-CAM overlay for %s: %s", path, drawn[i])
                result["gradcam_error"] = drawn[i]
            yield result


def to_csv(results: list[dict], class_names: Sequence[str]) -> str:
    """The results as CSV: file, class, one probability column per class, error, then
    prediction_set (names joined by ";") and refer when the model gives sets, and gradcam and
    gradcam_error when there are Grad-CAM overlays."""
    sets = ["prediction_set", "refer"] if any("prediction_set" in r for r in results) else []
    extra = sets + (["gradcam", "gradcam_error"] if any(
        "gradcam" in r or "gradcam_error" in r for r in results) else [])
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file", "class", *class_names, "error", *extra])
    for r in results:
        p = r.get("probabilities", {})
        writer.writerow([r["file"], r.get("class", ""), *(p.get(n, "") for n in class_names),
                         r.get("error", ""), *(_csv_cell(r.get(key, "")) for key in extra)])
    return out.getvalue()


def _csv_cell(value) -> str:
    if isinstance(value, list):
        return ";".join(value)
    return str(value).lower() if isinstance(value, bool) else value


def write_output(output: pathlib.Path, results: list[dict], class_names: Sequence[str]) -> None:
    """Writes the results to `output` (.csv or .jsonl) and prints its path.

    Raises:
      atomic.DiskError: `output` cannot be written (say the disk filled up meanwhile); the
        results are then printed on stdout as JSON lines, so that no classification is lost.
    """
    text = (to_csv(results, class_names) if output.suffix.lower() == ".csv"
            else "".join(json.dumps(r) + "\n" for r in results))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_atomic(output, text)
    except (atomic.DiskError, OSError) as e:
        error = e if isinstance(e, atomic.DiskError) else atomic.disk_error(output, e)
        sys.stdout.write("".join(json.dumps(r) + "\n" for r in results))
        sys.stdout.flush()
        raise atomic.DiskError(f"{error} The {len(results)} results are printed above on stdout "
                               "instead, one JSON line per file.") from None
    print(output)


FLAGS = flags.FLAGS
_OUTPUT_SUFFIXES = (".jsonl", ".csv")


def _define_flags() -> None:
    shared_flags.define_path("model", None, "The model.keras of a training run (or its workdir).")
    flags.DEFINE_integer("batch_size", 32, "Images classified per forward pass.")
    shared_flags.define_path("output", None, "Write the results to this .jsonl or .csv file instead of "
                        "stdout (with a progress bar on a terminal).")
    shared_flags.define_path("gradcam", None, "Folder for a Grad-CAM overlay PNG per image (created if "
                        "missing): the image, where the model found its evidence for the "
                        "predicted class, the class and its probability.")
    flags.DEFINE_bool("overwrite", False, "Replace --output and --gradcam overlays that exist.")
    flags.DEFINE_bool("series_summary", False,
                      "Also give one line per series (DICOM SeriesInstanceUID, else the folder): "
                      "the class of highest mean probability over its slices and how many slices "
                      "vote for each class; on stdout after the slices, or in "
                      "<output>_series.jsonl/.csv next to --output.")
    shared_flags.define_dicom_window_flag()


def series_output(output: pathlib.Path) -> pathlib.Path:
    """Where --series_summary goes when the slices go to --output: `<stem>_series<suffix>`."""
    return output.with_name(f"{output.stem}_series{output.suffix}")


def summarize_series(results: list[dict], class_names: Sequence[str]) -> list[dict]:
    """The per-series summaries of `results` (evaluation.series), keyed by series_key."""
    from mri_tfdata.evaluation import series

    keys = {}

    def series_of(file: str) -> str:
        if file not in keys:
            keys[file] = dicom.series_key(file)
        return keys[file]

    return series.summarize(results, series_of, class_names)


def _prepare_gradcam_dir(folder: pathlib.Path, paths: list[pathlib.Path], *,
                         overwrite: bool) -> None:
    """Creates the --gradcam folder, or refuses to replace overlays in it without --overwrite."""
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise UserError(f"--gradcam={folder} already holds {len(existing)} of the overlay files "
                        f"this command would write ({', '.join(existing[:3])}"
                        f"{', ...' if len(existing) > 3 else ''}); pass another --gradcam, or "
                        "--overwrite to replace them.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise atomic.disk_error(folder, e, "create") from None


def main(argv):
    require(bool(FLAGS.model), "--model is required: the model.keras file of a training run.")
    require(len(argv) > 1, "Pass image files or folders after the flags, e.g. "
            "mri-predict --model=runs/demo/model.keras scans/ scan.jpg")
    require(FLAGS.batch_size >= 1, "--batch_size must be at least 1.")
    output = pathlib.Path(FLAGS.output).expanduser() if FLAGS.output else None
    if output:
        require(output.suffix.lower() in _OUTPUT_SUFFIXES,
                f"--output={output} must end in .jsonl or .csv.")
        runner.refuse_existing(output, "output")
        if FLAGS.series_summary and series_output(output).exists() and not FLAGS.overwrite:
            raise UserError(f"{series_output(output)} (the --series_summary file of --output) "
                            "already exists; pass another --output, or --overwrite.")
        # Found now, not after every file has been classified.
        atomic.check_writable(output)
    dicom_window = shared_flags.dicom_window_from_flags()
    gradcam_dir = pathlib.Path(FLAGS.gradcam).expanduser() if FLAGS.gradcam else None
    if gradcam_dir:
        require(not gradcam_dir.exists() or gradcam_dir.is_dir(),
                f"--gradcam={gradcam_dir} is a file; pass a folder for the overlay PNGs.")
    # TensorFlow loads only once the flags are known to be valid.
    import keras

    from mri_tfdata.serving import model_file

    saved = model_file.load_classifier(FLAGS.model)
    files = expand_frames(find_images(argv[1:]))
    if gradcam_dir:
        _prepare_gradcam_dir(gradcam_dir, overlay_paths(files, gradcam_dir),
                             overwrite=FLAGS.overwrite)
    logging.info("Classifying %d files with %s.", len(files), saved.path)
    # On stdout the lines themselves show the progress; a bar only when they go to a file.
    bar = (keras.utils.Progbar(len(files), unit_name="file")
           if output and sys.stdout.isatty() and len(files) > FLAGS.batch_size else None)
    results = []
    for result in classify_files(saved, files, batch_size=FLAGS.batch_size,
                                 gradcam_dir=gradcam_dir, dicom_window=dicom_window):
        results.append(result)
        if output is None:
            print(json.dumps(result), flush=True)
        elif bar:
            bar.add(1)
    failures = sum("error" in r for r in results)
    no_overlay = sum("gradcam_error" in r for r in results)
    if output:
        write_output(output, results, saved.class_names)
    if FLAGS.series_summary:
        _write_series(summarize_series(results, saved.class_names), saved.class_names, output)
    logging.info("Classified %d files, %d could not be read.", len(results) - failures, failures)
    if gradcam_dir:
        logging.info("Wrote %d Grad-CAM overlays into %s; %d could not be drawn.",
                     len(results) - failures - no_overlay, gradcam_dir, no_overlay)
    if failures or no_overlay:
        sys.exit(1)


def _write_series(summaries: list[dict], class_names, output: pathlib.Path | None) -> None:
    """The series summaries on stdout, or next to --output in its format."""
    from mri_tfdata.evaluation import series

    if output is None:
        for summary in summaries:
            print(json.dumps(summary), flush=True)
        return
    target = series_output(output)
    if output.suffix.lower() == ".csv":
        out = io.StringIO()
        csv.writer(out).writerows(series.to_csv_rows(summaries, class_names))
        text = out.getvalue()
    else:
        text = "".join(json.dumps(s) + "\n" for s in summaries)
    atomic.write_atomic(target, text)
    print(target)


def console_main():
    """The `mri-predict` command."""
    runner.run(main, define_flags=_define_flags)


if __name__ == "__main__":
    console_main()
