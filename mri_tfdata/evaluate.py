"""Evaluates a saved model: `mri-evaluate --model=PATH --split=test --out=DIR`.

Writes metrics.json (accuracy, loss, per-class precision/recall/F1, sensitivity, specificity and
ROC AUC, calibration error, Brier score, confusion matrix), errors.csv (every misclassified file)
and confusion_matrix.png, roc.png, reliability.png and gradcam_examples.png into --out, and all
of them as TensorBoard summaries into --out/logs, by the code that ends a training run. The data
flags are the training ones; the image size is the model's own. The split's backbone features go
through the feature cache (--feature_cache), so evaluating the same model again decodes only the
few images shown with their Grad-CAMs.
"""

import dataclasses
import pathlib
import sys

from mri_tfdata.cli import console

console.setup_command(sys.argv)  # Before TensorFlow loads: a command starts quietly.

from absl import flags, logging  # noqa: E402

from mri_tfdata.cli import runner, shared_flags  # noqa: E402
from mri_tfdata.cli.runner import require  # noqa: E402
from mri_tfdata.core.errors import UserError  # noqa: E402

shared_flags.define_data_flags()
shared_flags.define_evaluation_flags()
shared_flags.define_path("model", None, "The saved model: a model.keras file written by training.")
flags.DEFINE_string("split", "test", "The split to evaluate (TFDS split syntax).")
shared_flags.define_path("out", None, "Directory for metrics.json, errors.csv and the plots "
                         "(created if missing).")
flags.DEFINE_bool("overwrite", False,
                  "Replace the metrics, errors.csv, the plots and logs/ already in --out.")

FLAGS = flags.FLAGS



def main(argv):
    require(len(argv) == 1, f"Unexpected arguments {argv[1:]}; every setting is a --flag.")
    require(bool(FLAGS.model), "--model is required: the model.keras file of a training run.")
    require(bool(FLAGS.out), "--out is required: the directory for metrics.json and the plots.")
    require(bool(FLAGS.split.strip()), "--split must name a split, e.g. test.")
    # TensorFlow loads only once the flags are known to be valid.
    from mri_tfdata.evaluation import evaluator, run_report
    from mri_tfdata.model import feature_cache
    from mri_tfdata.serving import model_file

    outputs = ("metrics.json", "errors.csv", "report.html", *(f"{plot}.png" for plot in evaluator.PLOTS), "logs")
    out = pathlib.Path(FLAGS.out).expanduser()
    existing = [n for n in outputs if (out / n).exists()]
    if existing and not FLAGS.overwrite:
        raise UserError(f"--out={out} already holds {', '.join(existing)}. Pass another --out, or "
                        "add --overwrite to replace them.")
    resamples = shared_flags.bootstrap_resamples_from_flags()
    saved = model_file.load_classifier(FLAGS.model)
    image_size = saved.image_size
    if FLAGS["image_size"].present:
        require(FLAGS.image_size == image_size,
                f"--image_size={FLAGS.image_size} differs from the model's input size "
                f"{image_size}; drop the flag (the model's size is used).")
    data = shared_flags.data_spec_from_flags(image_size=image_size)
    if data.source != "tfds" and data.class_names is None:
        # A folder is read with the model's classes: a class folder the model does not know is
        # refused by name, and a split may lack some of the model's classes.
        data = dataclasses.replace(data, class_names=saved.class_names)
    source = data.open(FLAGS.split)
    if tuple(source.class_names) != saved.class_names:
        raise UserError(f"{saved.path} predicts the classes {', '.join(saved.class_names)} but "
                        f"{data.describe()} has {', '.join(source.class_names)}; evaluate it on "
                        "the data it was trained for.")
    logging.info("Evaluating %s on %s split %r (%d images at %d px).", FLAGS.model,
                 data.describe(), FLAGS.split, source.num_examples, image_size)
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluator.evaluate_split(
        saved.model, source, out_dir=out, batch_size=FLAGS.batch_size,
        cache_dir=feature_cache.resolve_cache_dir(FLAGS.feature_cache),
        extra={"split": FLAGS.split, "model": str(FLAGS.model), "data": data.describe()},
        log_dir=out / "logs", bootstrap_resamples=resamples, calibration=saved.conformal)
    run_report.write_report_or_warn(out)  # After every other output; a failure only warns.
    logging.info("Accuracy %.4f, loss %.4f on %d images; wrote %s.", metrics["accuracy"],
                 metrics["loss"], metrics["num_examples"], out / "metrics.json")
    print(f"accuracy={metrics['accuracy']:.4f} loss={metrics['loss']:.4f} "
          f"examples={metrics['num_examples']} metrics={out / 'metrics.json'}")
    print("\n".join(uncertainty_lines(metrics)))


def uncertainty_lines(metrics: dict) -> list[str]:
    """The headline metrics with their 95% intervals, and how the prediction sets did."""
    from mri_tfdata.evaluation import bootstrap

    intervals = metrics["intervals"]
    level = intervals["level"]
    lines = [bootstrap.describe(name, metrics[key], intervals[key], level)
             for name, key in (("accuracy", "accuracy"), ("brier", "brier_score"),
                               ("ece", "expected_calibration_error"))]
    lines.append(bootstrap.describe("macro roc_auc", metrics["macro_avg"]["roc_auc"],
                                    intervals["macro_avg"]["roc_auc"], level))
    for name, per_class in metrics["per_class"].items():
        lines.append(f"{name}: " + ", ".join(
            bootstrap.describe(key, per_class[key], intervals["per_class"][name][key], level)
            for key in ("sensitivity", "specificity")))
    for name, found in metrics.get("conformal", {}).get("levels", {}).items():
        not_referred = found["accuracy_not_referred"]
        lines.append(
            f"{float(name):.0%} prediction sets: "
            + bootstrap.describe("coverage", found["coverage"], found["coverage_interval"], level)
            + f", mean size {found['mean_set_size']:.2f}, referred "
            f"{found['referred_fraction']:.1%}, accuracy of the rest "
            + ("undefined" if not_referred is None else f"{not_referred:.4f}"))
    return lines


def console_main():
    """The `mri-evaluate` command."""
    runner.run(main)


if __name__ == "__main__":
    console_main()
