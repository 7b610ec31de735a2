"""The sections of report.html, each an HTML fragment built from a run's Evidence (escaped)."""

import html

from mri_tfdata.evaluation.run_evidence import Evidence

_PLOT_CAPTIONS = {
    "confusion_matrix": "Confusion matrix: rows are the true classes, columns the predicted ones.",
    "roc": "ROC curve of each class against the rest, with its AUC.",
    "reliability": "Reliability of the top-class confidence (bars on the diagonal = calibrated).",
    "gradcam_examples": "Grad-CAM: correct predictions (top row), the most confident mistakes "
                        "(bottom row).",
    "loss": "Training and validation loss per epoch.",
    "accuracy": "Training and validation accuracy per epoch.",
}


def esc(value) -> str:
    return html.escape(str(value))


def absent(text: str) -> str:
    return f'<p class="absent">{esc(text)}</p>'


def number(value, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a" if value is None else esc(value)
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def interval_text(interval, intervals: dict | None) -> str:
    """' (95 % CI 0.61-0.70)' for a [lo, hi] pair, '' when there is none (or it is undefined)."""
    if not (isinstance(interval, (list, tuple)) and len(interval) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in interval)):
        return ""
    level = (intervals or {}).get("level")
    name = f"{level * 100:g} % CI" if isinstance(level, (int, float)) else "CI"
    return f" ({name} {number(interval[0])}&ndash;{number(interval[1])})"


def table(header, rows, numeric_from: int = 1) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{cell}</td>' if i >= numeric_from else f"<td>{cell}</td>"
                         for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def facts(pairs) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs) + "</dl>"


def figure(evidence: Evidence, name: str) -> str:
    uri = evidence.plots.get(name)
    if not uri:
        return absent(f"No {name}.png in this run's folders.")
    caption = _PLOT_CAPTIONS[name]
    return (f'<figure><img src="{uri}" alt="{esc(caption)}"><figcaption>{esc(caption)}'
            "</figcaption></figure>")


def run_settings(evidence: Evidence, part: str) -> dict:
    return ((evidence.run or {}).get("settings") or {}).get(part) or {}


def model_details(evidence: Evidence) -> str:
    model, train = run_settings(evidence, "model"), run_settings(evidence, "train")
    meta = evidence.model_metadata or {}
    if not model and not meta:
        return "<h2>Model</h2>" + absent("No run.json or model.keras found: model details unknown.")
    weights = model.get("weights")
    source = {"imagenet": "ImageNet (Keras applications)", "none": "none: random initialisation",
              None: "unknown (no run.json)"}.get(weights, f"file {weights}")
    tuned = train.get("fine_tune_blocks") or 0
    head = (f"{'standardised features, ' if model.get('standardize_features') else ''}"
            f"dense {', '.join(str(u) for u in model.get('head_units') or [])} "
            f"({model.get('head_activation', '?')}, dropout {model.get('dropout', '?')}), softmax")
    classes = meta.get("class_names") or (evidence.metrics or {}).get("class_names") or []
    return "<h2>Model</h2>" + facts([
        ("Backbone", "ResNet50, no top, global average pooling; "
         + (f"top {tuned} block(s) fine-tuned" if tuned else "frozen")),
        ("Weights source", esc(source)),
        ("Head", esc(head) if model else "unknown (no run.json)"),
        ("Input", f"{esc(meta.get('image_size', model.get('image_size', '?')))} px RGB images"),
        ("Classes", esc(", ".join(classes) or "unknown")),
        ("Written by", f"mri_tfdata {esc(meta.get('package_version', 'unknown'))} (model file "
         f"format {esc(meta.get('format_version', '?'))})"),
        ("Model file", f"<code>{esc((evidence.metrics or {}).get('model', 'unknown'))}</code>")])


def intended_use(evidence: Evidence) -> str:
    data, model = run_settings(evidence, "data"), run_settings(evidence, "model")
    warnings = []
    if model.get("weights") == "none":
        warnings.append("This run's backbone has random weights (weights=none): its metrics show "
                        "that the pipeline runs, not how well a model can classify scans.")
    if data.get("source") == "synthetic":
        warnings.append("The images are synthetic (generated shapes): the metrics say nothing "
                        "about MRI scans.")
    elif data.get("source") == "tfds" and data.get("tfds_config") != "dedup":
        warnings.append("The published Kaggle test split leaks from its training split (the same "
                        "images in both): these test metrics are optimistic. The TFDS config "
                        "dedup removes the duplicates.")
    elif data.get("source") == "folder":
        warnings.append("A Kaggle-layout folder is read as it is: if it is the published dataset, "
                        "its test split leaks from training; use the TFDS config dedup.")
    classes = (evidence.metrics or {}).get("class_names") or ["classes unknown"]
    return ("<h2>Intended use and limitations</h2>"
            f"<p>For research on MRI classification ({esc(', '.join(classes))}) only. "
            "<strong>Not a diagnostic device</strong>: it must not "
            "inform the care of a patient. It was trained on one public collection of 2D slices; "
            "other scanners, sequences, populations or preprocessing can lower its accuracy "
            "without warning.</p>"
            + "".join(f'<p class="warn">{esc(w)}</p>' for w in warnings))


def data(evidence: Evidence) -> str:
    settings, train = run_settings(evidence, "data"), run_settings(evidence, "train")
    metrics = evidence.metrics or {}
    if not settings and not metrics:
        return "<h2>Data</h2>" + absent("No run.json or metrics.json: the data is unknown.")
    source = settings.get("source", "unknown")
    pairs = [("Source", esc(metrics.get("data") or source
                            + (f" (config {settings.get('tfds_config')})"
                               if source == "tfds" else "")))]
    pairs += [(f"{name.capitalize()} split", f"<code>{esc(train[f'{name}_split'])}</code>")
              for name in ("train", "validation", "test") if train.get(f"{name}_split")]
    pairs.append(("Evaluated split", f"<code>{esc(metrics.get('split', 'none'))}</code>"))
    counts = metrics.get("training_examples_per_class") or {}
    support = {name: row.get("support") for name, row in (metrics.get("per_class") or {}).items()}
    names = list(counts) or list(support)
    counts_table = table(["class", "training images", "evaluated images"],
                   [[esc(n), number(counts.get(n)), number(support.get(n))] for n in names]
                   + [["all", number(sum(counts.values())) if counts else "n/a",
                       number(metrics.get("num_examples"))]]) if names else ""
    return "<h2>Data</h2>" + facts(pairs) + counts_table + _dataset_checks(evidence, source)


def _dataset_checks(evidence: Evidence, source: str) -> str:
    meta = evidence.dataset_metadata
    if meta is not None:
        skipped = meta.get("skipped_corrupt_files") or {}
        dropped = meta.get("dedup_dropped")
        lines = [f"Corrupt files skipped by the build: "
                 f"{esc(', '.join(f'{s} {n}' for s, n in skipped.items()) or 'none')}."]
        lines.append("Duplicates dropped by the build: " + (
            esc("; ".join(f"{s}: {r.get('duplicates_within_split', 0)} within the split, "
                          f"{r.get('in_earlier_split', 0)} also in an earlier split"
                          for s, r in dropped.items())) if dropped is not None
            else "none (this config does not de-duplicate)") + ".")
        return ("".join(f"<p>{line}</p>" for line in lines)
                + f'<p class="muted">From {esc(evidence.dataset_metadata_path)}.</p>')
    if source == "tfds":
        return absent("The built dataset's metadata.json was not found: skipped and duplicate "
                      "files unknown.")
    if source == "synthetic":
        return "<p>Generated images: none skipped, no duplicates.</p>"
    return absent("Skipped files are not recorded for a folder source (the training log names "
                  "them); duplicates are not removed.")


def recipe(evidence: Evidence) -> str:
    train, settings = run_settings(evidence, "train"), (evidence.run or {}).get("settings") or {}
    keys = ("epochs", "batch_size", "learning_rate", "schedule", "label_smoothing",
            "weight_decay", "fine_tune_blocks", "fine_tune_epochs", "fine_tune_learning_rate",
            "seed")
    pairs = [(k, esc(train[k])) for k in keys if k in train]
    pairs += [(k, esc(settings[k])) for k in ("precision", "replicas") if k in settings]
    run = evidence.run or {}
    if "started" in run:
        pairs.append(("started", esc(run["started"])))
    flags = (f'<h3>flags.txt</h3><pre class="flags">{esc(evidence.flags)}</pre>'
             if evidence.flags else absent("No flags.txt: the command's flags are unknown."))
    return ("<h2>Recipe</h2>" + (facts(pairs) if pairs else absent("No run.json found."))
            + flags)


# The model card's sections, before the results (report_results.SECTIONS).
SECTIONS = (model_details, intended_use, data, recipe)
