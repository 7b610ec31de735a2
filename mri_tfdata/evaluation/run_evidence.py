"""Gathers the evidence of one run from its folders: metrics, records, plots, versions, machine."""

import base64
import csv
import dataclasses
import importlib.metadata
import json
import os
import pathlib
import platform
import sys
import zipfile

import mri_tfdata

# The metadata member of a model.keras (serving.model_file.METADATA_FILE; serving sits above
# evaluation, so the name is repeated here and a test keeps the two equal).
MODEL_METADATA_MEMBER = "mri_tfdata.json"
# The plots a report shows, as <name>.png: evaluation's, then the training curves.
PLOTS = ("confusion_matrix", "roc", "reliability", "gradcam_examples", "loss", "accuracy")
# CPU flags meaning native bfloat16 (those runtime.precision counts when it picks a policy).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TFDS_NAME = "brain_tumor_mri"


@dataclasses.dataclass
class Evidence:
    """What a report shows; every part is None (or empty) when its file is absent.

    `unreadable` maps a file that exists but could not be read to why, so the report can say so.
    """

    folders: list[pathlib.Path]
    metrics: dict | None = None
    run: dict | None = None
    flags: str | None = None
    history: dict | None = None
    errors: list[dict] | None = None
    error_count: int = 0
    plots: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> data URI
    model_metadata: dict | None = None
    dataset_metadata: dict | None = None
    dataset_metadata_path: pathlib.Path | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    machine: dict[str, str] = dataclasses.field(default_factory=dict)
    unreadable: dict[str, str] = dataclasses.field(default_factory=dict)


def _find(folders, name: str) -> pathlib.Path | None:
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def _read_json(path: pathlib.Path | None, evidence: Evidence):
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except (OSError, ValueError) as e:
        evidence.unreadable[str(path)] = str(e)
        return None


def _read_errors(path: pathlib.Path | None, evidence: Evidence, rows: int) -> None:
    if path is None:
        return
    try:
        with path.open(encoding="utf-8", newline="") as f:
            records = list(csv.DictReader(f))
    except (OSError, ValueError, csv.Error) as e:
        evidence.unreadable[str(path)] = str(e)
        return
    evidence.errors, evidence.error_count = records[:rows], len(records)


def _read_plot(path: pathlib.Path | None, evidence: Evidence) -> str | None:
    """The PNG as a data URI, or None (a file that is not a PNG is recorded as unreadable)."""
    if path is None:
        return None
    try:
        content = path.read_bytes()
    except OSError as e:
        evidence.unreadable[str(path)] = str(e)
        return None
    if not content.startswith(_PNG_SIGNATURE):
        evidence.unreadable[str(path)] = "not a PNG image"
        return None
    return "data:image/png;base64," + base64.b64encode(content).decode("ascii")


def _model_metadata(path: pathlib.Path | None, evidence: Evidence) -> dict | None:
    if path is None:
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            value = json.loads(archive.read(MODEL_METADATA_MEMBER))
        return value if isinstance(value, dict) else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        evidence.unreadable[str(path)] = f"no readable {MODEL_METADATA_MEMBER} ({e})"
        return None


def _tfds_metadata_path(data_settings: dict) -> pathlib.Path | None:
    """The metadata.json of the built dataset a TFDS run read (the newest version built)."""
    if data_settings.get("source") != "tfds":
        return None
    root = (data_settings.get("tfds_data_dir") or os.environ.get("TFDS_DATA_DIR")
            or pathlib.Path.home() / "tensorflow_datasets")
    config_dir = pathlib.Path(root).expanduser() / _TFDS_NAME / str(
        data_settings.get("tfds_config", "default"))
    found = sorted(config_dir.glob("*/metadata.json"),
                   key=lambda p: tuple(int(x) for x in p.parent.name.split(".") if x.isdigit()))
    return found[-1] if found else None


def versions() -> dict[str, str]:
    """Python's version and the installed versions of TensorFlow, Keras and this package."""
    found = {"python": platform.python_version(), "mri_tfdata": mri_tfdata.__version__}
    for name, distributions in (("tensorflow", ("tensorflow", "tensorflow-cpu")),
                                ("keras", ("keras",))):
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        for distribution in distributions:
            if version:
                break
            try:
                version = importlib.metadata.version(distribution)
            except importlib.metadata.PackageNotFoundError:
                pass
        found[name] = version or "not installed"
    return found


def machine(cpuinfo: pathlib.Path = pathlib.Path("/proc/cpuinfo")) -> dict[str, str]:
    """The CPU model, its cores (all, and usable by this process) and its bfloat16 support."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # The first processor's.
    model = fields.get("model name") or fields.get("Hardware") or platform.processor()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    native = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model or "unknown", "cores": f"{os.cpu_count()} ({usable} usable here)",
            "native bfloat16": (f"yes ({', '.join(native)})" if native else
                                "no (bfloat16 would be emulated)") if text else "unknown",
            "platform": platform.platform()}


def gather(out_dir, *, error_rows: int = 10) -> Evidence:
    """Reads every file a report shows from `out_dir`, then from the model's training workdir.

    An evaluation's --out holds metrics.json (naming the model) and the evaluation plots; the run's
    record, flags and training curves are beside the model, in its training workdir.

    Args:
      out_dir: the training workdir, or mri-evaluate's --out.
      error_rows: how many of errors.csv's rows (the most confident mistakes) to keep.

    Returns:
      The Evidence; absent files leave their parts None.
    """
    out_dir = pathlib.Path(out_dir)
    evidence = Evidence(folders=[out_dir])
    evidence.metrics = _read_json(_find([out_dir], "metrics.json"), evidence)
    model = (evidence.metrics or {}).get("model")
    model_path = pathlib.Path(model).expanduser() if isinstance(model, str) and model else None
    if model_path is not None:
        # --model names the model.keras, or the training workdir that holds it.
        model_dir = model_path if model_path.is_dir() else model_path.parent
        if model_dir.resolve() != out_dir.resolve():
            evidence.folders.append(model_dir)
    folders = evidence.folders
    evidence.run = _read_json(_find(folders, "run.json"), evidence)
    flags = _find(folders, "flags.txt")
    try:
        evidence.flags = flags.read_text(encoding="utf-8") if flags else None
    except (OSError, ValueError) as e:
        evidence.unreadable[str(flags)] = str(e)
    evidence.history = _read_json(_find(folders, "history.json"), evidence)
    _read_errors(_find([out_dir], "errors.csv"), evidence, error_rows)
    for name in PLOTS:
        uri = _read_plot(_find(folders if name in ("loss", "accuracy") else [out_dir],
                               f"{name}.png"), evidence)
        if uri:
            evidence.plots[name] = uri
    evidence.model_metadata = _model_metadata(
        model_path if model_path and model_path.is_file() else _find(folders, "model.keras"),
        evidence)
    data_settings = ((evidence.run or {}).get("settings") or {}).get("data") or {}
    evidence.dataset_metadata_path = _tfds_metadata_path(data_settings)
    evidence.dataset_metadata = _read_json(evidence.dataset_metadata_path, evidence)
    evidence.versions, evidence.machine = versions(), machine()
    return evidence
