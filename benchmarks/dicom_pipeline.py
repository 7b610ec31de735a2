"""Benchmarks DICOM input against JPEG: the same slices through the package's folder pipeline.

    python benchmarks/dicom_pipeline.py --data_dir=/work/shared/data/kaggle-brain-tumor-mri-native \
        [--images=512] [--image_size=256] [--rounds=2]

Takes the first --images 512x512 JPEGs of the Training split (or synthetic slices without
--data_dir), writes each as a JPEG tree (the files as they are) and as a DICOM tree (its grey
level scaled to 12 bits, stored uncompressed as uint16 with RescaleIntercept -1024 and a
window covering its range, as an MR export does), then times, interleaved round by round in one
process so that other load hits both alike: opening the split (listing and checking every file:
load_folder_source), the cold epoch (decode, resize, fill the memory cache) and a warm epoch
from the cache; the cold epoch also in images per CPU second of this process, its cost whatever
else runs on the host; and the CPU milliseconds per image of the read-decode-resize chain alone,
one file at a time. Prints one line per round and format, then, as JSON, the best rates, the
DICOM/JPEG ratios of the best rates, and the median over the rounds of each round's DICOM/JPEG ratio (the
figure to quote: other load hits a round's two formats alike).
"""

import json
import pathlib
import resource
import statistics
import tempfile
import time

import numpy as np
from absl import flags

from mri_tfdata.cli import runner

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Kaggle-layout folder of native JPEGs; none: synthetic.")
flags.DEFINE_integer("images", 512, "Slices per format.")
flags.DEFINE_integer("image_size", 256, "Side of the images delivered, in pixels.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("rounds", 2, "Interleaved rounds (JPEG then DICOM); the best is reported.")

CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")


def _slices(count: int):
    """(class, name, grey uint8 512x512, JPEG bytes or None) of `count` slices."""
    from PIL import Image
    import io

    if FLAGS.data_dir:
        root = pathlib.Path(FLAGS.data_dir) / "Training"
        found = 0
        for path in sorted(root.glob("*/*.jpg")):
            with Image.open(path) as img:
                if img.size != (512, 512):
                    continue
                grey = np.asarray(img.convert("L"))
            yield path.parent.name, path.stem, grey, path.read_bytes()
            found += 1
            if found == count:
                return
        return
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:512, :512]
    for i in range(count):
        blob = np.exp(-((x - 256 - 60 * np.sin(i)) ** 2 + (y - 256) ** 2) / (2 * 90.0 ** 2))
        grey = np.clip(200 * blob + rng.normal(0, 12, (512, 512)), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="JPEG", quality=90)
        yield CLASS_NAMES[i % 4], f"s{i:05d}", grey, buffer.getvalue()


def _write_trees(base: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, int]:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    count = 0
    for name, stem, grey, jpeg in _slices(FLAGS.images):
        for split in ("Training", "Testing"):
            (base / "jpeg" / split / name).mkdir(parents=True, exist_ok=True)
            (base / "dicom" / split / name).mkdir(parents=True, exist_ok=True)
        (base / "jpeg" / "Training" / name / f"{stem}.jpg").write_bytes(jpeg)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^Mark", "BENCH", "MR"
        ds.Rows, ds.Columns = grey.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 2048 - 1024, 4096
        ds.PixelData = (grey.astype(np.uint16) * 16 + 8).tobytes()
        ds.save_as(base / "dicom" / "Training" / name / f"{stem}.dcm", enforce_file_format=True)
        count += 1
    # A test split so that the layout is complete; never read here.
    for fmt in ("jpeg", "dicom"):
        first = next((base / fmt / "Training").glob("*/*"))
        target = base / fmt / "Testing" / first.parent.name / first.name
        target.write_bytes(first.read_bytes())
    del pydicom
    return base / "jpeg", base / "dicom", count


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _epoch(dataset) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of this process) of one pass over `dataset`."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    count = sum(int(images.shape[0]) for images, _ in dataset)
    return count, time.perf_counter() - start, _cpu_seconds() - cpu


def _decode_cpu_ms(source) -> float:
    """CPU milliseconds per image of reading, decoding and resizing every file of `source`, one
    file at a time, in TensorFlow alone (no Python per image, no cache, no batching)."""
    import tensorflow as tf
    from mri_tfdata.data import decoding

    decoded = source.dataset.map(
        lambda encoded, label: decoding.decode_and_resize(encoded, image_size=FLAGS.image_size))
    cpu = _cpu_seconds()
    count = int(decoded.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    return (_cpu_seconds() - cpu) * 1e3 / count


def _measure(root: pathlib.Path) -> dict:
    from mri_tfdata.data import images, input_pipeline, sources

    images._verdicts.clear()  # Every round checks every file again, as a new process would.
    start = time.perf_counter()
    source = sources.load_folder_source(root, split="train")
    open_s = time.perf_counter() - start
    dataset = input_pipeline.make_dataset(source, image_size=FLAGS.image_size,
                                          batch_size=FLAGS.batch_size, training=True,
                                          cache="memory", seed=None)
    count, cold_s, cold_cpu_s = _epoch(dataset)
    _, warm_s, _ = _epoch(dataset)
    decode_cpu_ms = _decode_cpu_ms(source)
    # Images per CPU second: what the cold epoch costs, whatever else runs on the host.
    return {"images": count, "open_img_s": source.num_examples / open_s,
            "cold_epoch_img_s": count / cold_s, "cold_epoch_img_per_cpu_s": count / cold_cpu_s,
            "decode_cpu_ms_per_img": decode_cpu_ms,
            "cold_with_open_img_s": count / (cold_s + open_s), "warm_img_s": count / warm_s}


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_root, dicom_root, count = _write_trees(pathlib.Path(tmp))
        print(f"{count} slices of 512x512 per format, {FLAGS.image_size} px out, "
              f"batch {FLAGS.batch_size}")
        best = {"jpeg": {}, "dicom": {}}
        round_ratios = []
        for round_index in range(FLAGS.rounds):
            measured = {}
            for fmt, root in (("jpeg", jpeg_root), ("dicom", dicom_root)):
                measured[fmt] = rates = _measure(root)
                print(f"round {round_index + 1} {fmt:5s} " + " ".join(
                    f"{k}={v:.4g}" for k, v in rates.items() if k != "images"), flush=True)
                for key, value in rates.items():
                    best[fmt][key] = max(best[fmt].get(key, 0), value)
            round_ratios.append({key: measured["dicom"][key] / measured["jpeg"][key]
                                 for key in measured["jpeg"] if key != "images"})
    ratios = {key: best["dicom"][key] / best["jpeg"][key]
              for key in best["jpeg"] if key != "images"}
    medians = {key: round(statistics.median(r[key] for r in round_ratios), 3)
               for key in round_ratios[0]}
    print(json.dumps({"best": best, "dicom_over_jpeg_of_best": ratios,
                      "dicom_over_jpeg_median_of_rounds": medians}, indent=1))


if __name__ == "__main__":
    runner.run(main)
