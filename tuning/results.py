"""What a search leaves behind: the trial table (CSV), a summary, the plot and best.flags."""

import csv
import io
import math
from pathlib import Path

import keras_tuner
from matplotlib.ticker import MaxNLocator

from mri_tfdata.core import atomic
from mri_tfdata.evaluation import reports
from mri_tfdata.evaluation.reports import plt
from tuning.hypermodel import head_units
from tuning.tuners import trial_number

RESULTS_CSV = "results.csv"
PLOT_PNG = "objective.png"
BEST_FLAGS = "best.flags"


def trial_rows(oracle, objective: keras_tuner.Objective) -> list[dict]:
    """One row per trial of `oracle`, in trial order.

    Args:
      oracle: the tuner's oracle (holds every trial, also those of earlier, resumed runs).
      objective: the search's objective; its name is the column of the trial scores.

    Returns:
      Dicts with trial (the number KerasTuner's log shows, "Trial #1" = 1), folder (the trial's
      folder in the project), status, the objective, head_units and every hyperparameter.
    """
    rows = []
    for trial_id, trial in sorted(oracle.trials.items(), key=lambda item: int(item[0])):
        values = dict(trial.hyperparameters.values)
        row = {"trial": trial_number(trial_id), "folder": f"trial_{trial_id}",
               "status": trial.status, objective.name: trial.score}
        row["head_units"] = ",".join(map(str, head_units(values))) if "num_layers" in values else ""
        row.update(sorted(values.items()))
        rows.append(row)
    return rows


def completed_rows(rows: list[dict], objective: keras_tuner.Objective) -> list[dict]:
    """The rows of completed trials with a finite objective, in their order in `rows`."""
    return [r for r in rows if r["status"] == "COMPLETED" and r[objective.name] is not None
            and math.isfinite(r[objective.name])]


def ranked(rows: list[dict], objective: keras_tuner.Objective) -> list[dict]:
    """The completed rows, best first (the earlier trial first on ties)."""
    sign = 1 if objective.direction == "min" else -1
    return sorted(completed_rows(rows, objective), key=lambda r: sign * r[objective.name])


def best_row(rows: list[dict], objective: keras_tuner.Objective) -> dict | None:
    """The completed trial with the best objective (the first one on ties), or None."""
    done = ranked(rows, objective)
    return done[0] if done else None


def write_csv(rows: list[dict], path: Path) -> Path:
    """Writes the rows as CSV; columns are the union of all rows' keys, fixed ones first."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_atomic(path, buffer.getvalue())
    return path


def summary(rows: list[dict], objective: keras_tuner.Objective, *, top: int = 5) -> str:
    """A plain-text table of the `top` best completed trials, best first."""
    done = ranked(rows, objective)
    name = objective.name
    lines = [(f"{len(rows)} trial(s), {len(done)} completed. "
              f"Best {min(top, len(done))} by {name} ({objective.direction}):"),
             (f"{'trial':>6} {name:>17} {'head_units':>10} {'lr':>9} {'schedule':>9} "
              f"{'smooth':>6} {'decay':>6} {'batch':>5} {'epochs':>6}")]
    for r in done[:top]:
        lines.append(f"{r['trial']:>6} {r[name]:>17.4f} {r['head_units']:>10} "
                     f"{r.get('learning_rate', math.nan):>9.3g} {r.get('lr_schedule', ''):>9} "
                     f"{r.get('label_smoothing', 0):>6.2f} {r.get('weight_decay', 0):>6.0e} "
                     f"{r.get('batch_size', ''):>5} "
                     f"{r.get('epochs', r.get('tuner/epochs', '')):>6}")
    return "\n".join(lines)


def plot(rows: list[dict], objective: keras_tuner.Objective, path: Path, *,
         finalists: tuple[int, ...] = (), chosen: int | None = None) -> Path:
    """Plots the objective against trial number (with the best so far) and learning rate.

    Args:
      rows: trial_rows.
      objective: the search's objective.
      path: the PNG to write.
      finalists: the trial numbers the final selection re-scored (ringed).
      chosen: the trial number of the head best.flags takes (a star), or None when that is the
        default head, which is no trial (then said in the title).
    """
    name = objective.name
    done = completed_rows(rows, objective)
    numbers = [r["trial"] for r in done]
    scores = [r[name] for r in done]
    better = min if objective.direction == "min" else max
    fig, (by_trial, by_lr) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    by_trial.scatter(numbers, scores, s=18, label="trial")
    best, running = None, []
    for score in scores:
        best = score if best is None else better(best, score)
        running.append(best)
    by_trial.step(numbers, running, where="post", color="tab:orange", label="best so far")
    by_lr.scatter([r["learning_rate"] for r in done], scores, s=18)
    ring = {"s": 110, "facecolors": "none", "edgecolors": "tab:green", "linewidths": 1.5}
    star = {"s": 220, "marker": "*", "color": "tab:red"}
    marks = [(finalists, ring, "re-scored in the final selection"),
             ((chosen,) if chosen is not None else (), star, "chosen (best.flags)")]
    for trials, style, label in marks:
        picked = [r for r in done if r["trial"] in trials]
        if picked:
            by_trial.scatter([r["trial"] for r in picked], [r[name] for r in picked], label=label,
                             zorder=3, **style)
            by_lr.scatter([r["learning_rate"] for r in picked], [r[name] for r in picked],
                          zorder=3, **style)
    # Trials are whole numbers: no 0.5 ticks, whatever their count.
    by_trial.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_trial.set_xlabel("trial (as in KerasTuner's log)")
    by_trial.set_ylabel(f"{name} ({'lower' if objective.direction == 'min' else 'higher'} "
                        "is better)")
    by_trial.legend(loc="best", fontsize="small")
    by_lr.set_xscale("log")
    by_lr.set_xlabel("learning rate")
    for ax in (by_trial, by_lr):
        ax.grid(alpha=0.3)
    title = f"{name} of {len(done)} completed trial(s)"
    if chosen is None and finalists:
        title += "; the final selection chose the default head"
    elif chosen is not None:
        title += f"; chosen: trial {chosen}"
    fig.suptitle(title)
    fig.tight_layout()
    return reports.save_figure(fig, path)


def write_best_flags(flag_lines: dict[str, str], path: Path, *, header: str) -> Path:
    """Writes a flagfile: `header` as comment lines, then one serialised flag per line, sorted.

    Args:
      flag_lines: flag name -> serialised flag ("--name=value"), as train.py takes them.
      path: the file to write.
      header: text for the comment at the top (absl skips lines starting with #).
    """
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    # Unset flags (e.g. --tpu) serialise to "", which absl would not read back.
    body = "".join(f"{flag_lines[n]}\n" for n in sorted(flag_lines) if flag_lines[n])
    atomic.write_atomic(path, comment + body)
    return path
