"""The results sections of report.html: metrics with intervals, plots, conformal sets, errors."""

from mri_tfdata.evaluation.report_sections import (absent, esc, facts, figure, interval_text,
                                                   number, table)
from mri_tfdata.evaluation.run_evidence import Evidence

_PER_CLASS = ("precision", "recall", "f1", "sensitivity", "specificity", "roc_auc")


def _value(metrics: dict, key: str, value, interval) -> str:
    """A metric with its interval; an undefined one says why (metrics.json's "undefined")."""
    if value is None:
        why = (metrics.get("undefined") or {}).get(key)
        return f'undefined<br><span class="muted">{esc(why)}</span>' if why else "n/a"
    ci = interval_text(interval, metrics.get("intervals")).strip()
    return number(value) + (f'<br><span class="ci">{ci}</span>' if ci else "")


def metrics_section(evidence: Evidence) -> str:
    metrics = evidence.metrics
    if not metrics:
        return "<h2>Metrics</h2>" + absent("No metrics.json: the run was not evaluated.")
    intervals = metrics.get("intervals") or {}
    macro, macro_ci = metrics.get("macro_avg") or {}, intervals.get("macro_avg") or {}
    overall = [("accuracy", metrics.get("accuracy"), intervals.get("accuracy")),
               ("loss (cross-entropy)", metrics.get("loss"), None),
               ("macro ROC AUC", macro.get("roc_auc"), macro_ci.get("roc_auc")),
               ("macro F1", macro.get("f1"), None),
               ("expected calibration error", metrics.get("expected_calibration_error"),
                intervals.get("expected_calibration_error")),
               ("Brier score", metrics.get("brier_score"), intervals.get("brier_score"))]
    keys = {"macro ROC AUC": "macro_avg.roc_auc"}
    rows = [[esc(name), _value(metrics, keys.get(name, name), value, ci)]
            for name, value, ci in overall]
    if intervals:
        note = (f"<p class=\"muted\">Intervals: {esc(intervals.get('method', '?'))}, "
                f"{esc(intervals.get('resamples', '?'))} resamples, seed "
                f"{esc(intervals.get('seed', '?'))}.</p>")
    else:
        note = absent("No intervals in metrics.json: the values are point estimates only.")
    per_class, class_ci = metrics.get("per_class") or {}, intervals.get("per_class") or {}
    class_rows = [[esc(name)] + [
        _value(metrics, f"per_class.{name}.{m}", row.get(m), (class_ci.get(name) or {}).get(m))
        for m in _PER_CLASS] + [number(row.get("support"))] for name, row in per_class.items()]
    return ("<h2>Metrics</h2>" + table(["metric", "value"], rows) + note
            + "<h3>Each class against the rest</h3>"
            + table(["class", *_PER_CLASS, "support"], class_rows))


def plots_section(evidence: Evidence) -> str:
    matrix = (evidence.metrics or {}).get("confusion_matrix")
    names = (evidence.metrics or {}).get("class_names") or []
    counts = ""
    if matrix and len(names) == len(matrix):
        counts = ("<h3>Confusion matrix (rows true, columns predicted)</h3>"
                  + table(["true \\ predicted", *names],
                          [[esc(n), *(number(c) for c in row)] for n, row in zip(names, matrix)]))
    return ("<h2>Confusion matrix, ROC and calibration</h2>" + counts + '<div class="figs">'
            + "".join(figure(evidence, n) for n in ("confusion_matrix", "roc", "reliability"))
            + "</div>")


def conformal_section(evidence: Evidence) -> str:
    conformal = (evidence.metrics or {}).get("conformal")
    if not conformal:
        return ("<h2>Prediction sets and referral</h2>"
                + absent("No conformal prediction sets in metrics.json: no coverage guarantee "
                         "or referral rate for this run."))
    levels = conformal.get("levels") or {}
    rows = [[esc(level), number(row.get("threshold")),
             number(row.get("coverage")) + interval_text(row.get("coverage_interval"), None),
             number(row.get("mean_set_size")), number(row.get("referred_fraction")),
             number(row.get("accuracy_not_referred"))] for level, row in levels.items()]
    return ("<h2>Prediction sets and referral</h2>"
            f"<p>Conformal prediction sets (score {esc(conformal.get('score', '?'))}), calibrated "
            f"on {esc(conformal.get('calibration_examples', '?'))} images of "
            f"<code>{esc(conformal.get('calibration_split', '?'))}</code>. At level L the sets "
            "are built to hold the true class for a fraction L of images, on average; coverage is "
            "what this split shows. An image whose set is not one single class is referred to a "
            "human reader.</p>"
            + table(["level", "threshold", "coverage", "mean set size", "referred",
                     "accuracy of the rest"], rows))


def errors_section(evidence: Evidence) -> str:
    if evidence.errors is None:
        listing = absent("No errors.csv: the mistakes are not listed.")
    elif not evidence.errors:
        listing = "<p>No misclassified image.</p>"
    else:
        listing = (f"<p>{evidence.error_count} misclassified image(s); the "
                   f"{len(evidence.errors)} most confident mistakes (errors.csv):</p>"
                   + table(["file", "true class", "predicted", "probability"],
                           [[f"<code>{esc(r.get('file'))}</code>", esc(r.get("true_class")),
                             esc(r.get("predicted_class")), esc(r.get("probability"))]
                            for r in evidence.errors], numeric_from=3))
    gradcam = (figure(evidence, "gradcam_examples") if "gradcam_examples" in evidence.plots
               else absent("No gradcam_examples.png: no Grad-CAM was run for this evaluation."))
    return "<h2>What the model looked at, and its worst mistakes</h2>" + gradcam + listing


def curves_section(evidence: Evidence) -> str:
    history = evidence.history or {}
    epochs = history.get("epoch") or []
    last = ""
    if epochs:
        keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if history.get(k)]
        last = (f"<p>Last epoch ({esc(epochs[-1])}): "
                + ", ".join(f"{esc(k)} {number(history[k][-1])}" for k in keys) + ".</p>")
    elif evidence.history is None:
        last = absent("No history.json: the per-epoch values are unknown.")
    return ("<h2>Training curves</h2>" + last + '<div class="figs">'
            + "".join(figure(evidence, n) for n in ("loss", "accuracy")) + "</div>")


def environment_section(evidence: Evidence) -> str:
    precision = ((evidence.run or {}).get("settings") or {}).get("precision")
    rows = [(k, esc(v)) for k, v in evidence.versions.items()]
    rows += [(k, esc(v)) for k, v in evidence.machine.items()]
    rows.append(("precision policy of the run", esc(precision or "unknown (no run.json)")))
    unreadable = ""
    if evidence.unreadable:
        unreadable = ("<h3>Files that could not be read</h3><ul>" + "".join(
            f"<li><code>{esc(path)}</code>: {esc(why)}</li>"
            for path, why in evidence.unreadable.items()) + "</ul>")
    return ("<h2>Software and machine</h2><p class=\"muted\">Of the process that wrote this "
            "report.</p>" + facts(rows) + unreadable)


SECTIONS = (metrics_section, plots_section, conformal_section, errors_section, curves_section,
            environment_section)
