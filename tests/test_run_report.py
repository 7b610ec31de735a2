"""report.html: every section rendered or said absent, self-contained, escaped, never fatal."""

import base64
import errno
import hashlib
import io
import json
import re

import pytest
import run_folders
from PIL import Image

from mri_tfdata.core import atomic
from mri_tfdata.evaluation import report_results, run_evidence, run_report

SECTIONS = ("Model", "Intended use and limitations", "Data", "Recipe", "Metrics",
            "Confusion matrix, ROC and calibration", "Prediction sets and referral",
            "What the model looked at, and its worst mistakes", "Training curves",
            "Software and machine")


def _text(page: str) -> str:
    """The page's text, tags removed and spaces collapsed (the escaped entities kept)."""
    inline = re.sub(r"</?(code|strong|span)\b[^>]*>", "", page)
    return " ".join(re.sub(r"<[^>]+>", " ", inline).split())


def _report(folder) -> str:
    assert run_report.write_report(folder) == folder / run_report.REPORT_FILE
    return (folder / run_report.REPORT_FILE).read_text()


def test_a_full_run_shows_every_section_with_intervals_and_conformal_sets(tmp_path):
    page = _report(run_folders.write_run(tmp_path / "run"))
    text = _text(page)
    assert re.findall(r"<h2>(.*?)</h2>", page) == list(SECTIONS)
    assert "Not a diagnostic device" in text and "weights=none" in text
    assert "synthetic (generated shapes)" in text
    # Intervals, from metrics.json's "intervals", beside their metrics.
    assert "(95 % CI 0.612&ndash;0.823)" in page  # accuracy
    assert "(95 % CI 0.841&ndash;0.952)" in page  # macro ROC AUC
    assert "(95 % CI 0.051&ndash;0.212)" in page  # ECE
    assert page.count("(95 % CI 0.411&ndash;0.922)") == 4  # each class's sensitivity
    assert "stratified bootstrap, percentile, 1000 resamples, seed 0" in text
    # Conformal sets: coverage with its interval, set size, referral, accuracy of the rest.
    assert "score aps" in text and "24 images of train[90%:]" in text
    assert re.search(r"0\.95 0\.941 0\.967 \(CI 0\.886&ndash;0\.991\) 1\.817 0\.583 0\.960", text)
    # Model card facts from run.json and model.keras; the data's counts; flags; curves.
    assert "mri_tfdata 9.8.7 (model file format 1)" in text
    assert "dense 512, 128 (relu, dropout 0.0)" in text
    assert "all 216 60" in text
    assert "--epochs=6" in text
    assert "Last epoch (2): loss 0.250, accuracy 0.875, val_loss 1.125, val_accuracy 0.625" in text
    assert "14 misclassified image(s); the 10 most confident mistakes" in text
    assert "precision policy of the run mixed_bfloat16" in text
    for key in ("python", "tensorflow", "keras", "mri_tfdata", "cpu", "cores", "native bfloat16"):
        assert f"<dt>{key}</dt>" in page
    assert page.count("<img ") == len(run_evidence.PLOTS)
    assert "class=\"absent\"" not in page  # Nothing is missing.


def test_absent_inputs_are_each_said_in_one_line(tmp_path):
    folder = run_folders.write_run(tmp_path / "run", uncertainty=False, gradcam=False)
    for name in ("history.json", "flags.txt", "errors.csv", "roc.png"):
        (folder / name).unlink()
    page = _report(folder)
    assert re.findall(r"<h2>(.*?)</h2>", page) == list(SECTIONS)  # No section vanishes.
    absent = re.findall(r'<p class="absent">(.*?)</p>', page)
    assert absent == [
        "No flags.txt: the command&#x27;s flags are unknown.",
        "No intervals in metrics.json: the values are point estimates only.",
        "No roc.png in this run&#x27;s folders.",
        "No conformal prediction sets in metrics.json: no coverage guarantee or referral rate "
        "for this run.",
        "No gradcam_examples.png: no Grad-CAM was run for this evaluation.",
        "No errors.csv: the mistakes are not listed.",
        "No history.json: the per-epoch values are unknown."]
    assert "CI" not in _text(page)


def test_a_folder_with_nothing_in_it_still_gets_a_report_saying_so(tmp_path):
    text = _text(_report(tmp_path))
    for line in ("No metrics.json: this run has no evaluation.",
                 "No run.json or model.keras found: model details unknown.",
                 "No run.json or metrics.json: the data is unknown.",
                 "No metrics.json: the run was not evaluated.",
                 "No confusion_matrix.png in this run's folders.".replace("'", "&#x27;")):
        assert line in text


def test_the_page_is_self_contained_escaped_and_its_images_are_the_run_plots(tmp_path):
    folder = run_folders.write_run(tmp_path / "run")
    page = _report(folder)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "@media print" in page and "@media (max-width" in page
    assert not re.search(r"<script|<link|<iframe|\bon\w+=|url\(", page, re.I)
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    # The hostile file name in errors.csv is shown as text, not markup.
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;&amp;.jpg" in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == len(run_evidence.PLOTS)
    for uri, name in zip(sources, run_evidence.PLOTS):
        prefix = "data:image/png;base64,"
        assert uri.startswith(prefix)
        content = base64.b64decode(uri[len(prefix):], validate=True)
        assert content == (folder / f"{name}.png").read_bytes()
        Image.open(io.BytesIO(content)).verify()  # Decodes as a whole PNG.


@pytest.mark.parametrize("model_flag", ["model.keras", ""])  # mri-evaluate takes either.
def test_an_evaluation_out_folder_takes_the_run_record_from_the_models_workdir(tmp_path,
                                                                               model_flag):
    workdir = run_folders.write_run(tmp_path / "run")
    out = tmp_path / "eval"
    out.mkdir()
    run_folders.write_metrics(out, model=workdir / model_flag, uncertainty=False)
    (out / "confusion_matrix.png").write_bytes(run_folders.png("black"))
    text = _text(_report(out))
    assert "--epochs=6" in text and "mri_tfdata 9.8.7" in text and "Last epoch (2)" in text
    assert f"from {out}, {workdir}." in text
    # The evaluation's own plots are not taken from the training run's.
    assert "No roc.png in this run&#x27;s folders." in text


@pytest.mark.parametrize("config, dropped", [
    ("dedup", "train: 3 within the split, 0 also in an earlier split; test: 1 within the "
              "split, 212 also in an earlier split."),
    ("default", "none (this config does not de-duplicate)."),
])
def test_a_tfds_run_reports_the_builds_skipped_and_dropped_files(tmp_path, config, dropped):
    tfds_dir = tmp_path / "tfds"
    for version, corrupt in (("1.0.0", 7), ("1.2.0", 2)):  # The newest version built is read.
        folder = tfds_dir / "brain_tumor_mri" / config / version
        folder.mkdir(parents=True)
        meta = {"skipped_corrupt_files": {"train": corrupt, "test": 0}}
        if config == "dedup":
            meta["dedup_dropped"] = {
                "train": {"duplicates_within_split": 3, "in_earlier_split": 0},
                "test": {"duplicates_within_split": 1, "in_earlier_split": 212}}
        (folder / "metadata.json").write_text(json.dumps(meta))
    settings = run_folders.run_settings(source="tfds", tfds_config=config,
                                        tfds_data_dir=str(tfds_dir), weights="imagenet")
    text = _text(_report(run_folders.write_run(tmp_path / "run", settings=settings)))
    assert "Corrupt files skipped by the build: train 2, test 0." in text
    assert f"Duplicates dropped by the build: {dropped}" in text
    assert ("test split leaks from its training split" in text) == (config == "default")
    assert "random weights" not in text and "ImageNet" in text


def test_damaged_inputs_are_named_and_the_rest_is_still_reported(tmp_path):
    folder = run_folders.write_run(tmp_path / "run")
    (folder / "run.json").write_text("{garbled")
    (folder / "roc.png").write_bytes(b"not a png")
    (folder / "model.keras").write_bytes(b"not a zip")
    page = _report(folder)
    text = _text(page)
    assert f"{folder / 'run.json'}: Expecting property name" in text
    assert f"{folder / 'roc.png'}: not a PNG image" in text
    assert f"{folder / 'model.keras'}: no readable mri_tfdata.json" in text
    assert "(95 % CI 0.612&ndash;0.823)" in page and page.count("<img ") == 5


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_a_full_disk_costs_only_the_report_with_one_warning(tmp_path, monkeypatch, caplog):
    folder = run_folders.write_run(tmp_path / "run")
    before = _digests(folder)

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", no_space)
    assert run_report.write_report_or_warn(folder) is None
    assert _digests(folder) == before  # No report, no temp file, every other output intact.
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"Could not write {folder / 'report.html'}" in warning
    assert "No space left on device" in warning


def test_a_fault_in_the_report_code_is_one_warning_not_a_failed_run(tmp_path, monkeypatch, caplog):
    folder = run_folders.write_run(tmp_path / "run")

    def broken(evidence):
        raise KeyError("per_class")

    monkeypatch.setattr(report_results, "SECTIONS", (broken,))
    assert run_report.write_report_or_warn(folder) is None
    assert not (folder / "report.html").exists()
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert f"Could not write {folder / 'report.html'} (KeyError: 'per_class')" in warning
    monkeypatch.undo()
    assert run_report.write_report_or_warn(folder) == folder / "report.html"


def test_machine_reads_the_cpu_model_and_its_bfloat16_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2\n\n"
                       "processor\t: 1\nmodel name\t: other\nflags\t\t: amx_bf16\n")
    found = run_evidence.machine(cpuinfo)
    assert found["cpu"] == "Test CPU 9000"
    assert found["native bfloat16"] == "no (bfloat16 would be emulated)"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: fpu avx512_bf16 amx_bf16\n")
    assert run_evidence.machine(cpuinfo)["native bfloat16"] == "yes (avx512_bf16, amx_bf16)"
    assert run_evidence.machine(tmp_path / "missing")["native bfloat16"] == "unknown"


def test_the_names_repeated_from_higher_layers_agree_with_them():
    from mri_tfdata.runtime import precision
    from mri_tfdata.serving import model_file

    assert run_evidence.MODEL_METADATA_MEMBER == model_file.METADATA_FILE
    assert set(run_evidence.BF16_CPU_FLAGS) == precision._CPU_BF16_FLAGS


def test_an_undefined_interval_is_left_out_not_printed_as_nonsense(tmp_path):
    folder = run_folders.write_run(tmp_path / "run")
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["intervals"]["per_class"]["glioma"]["roc_auc"] = [None, None]
    metrics["intervals"]["brier_score"] = None
    (folder / "metrics.json").write_text(json.dumps(metrics))
    page = _report(folder)
    assert "n/a&ndash;" not in page and "None" not in page
    assert page.count("(95 % CI 0.771&ndash;0.993)") == 3  # The other classes' AUC.
