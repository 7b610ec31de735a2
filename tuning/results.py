"""What a search leaves behind: the trial table (CSV), a summary, the plot and best.flags."""

import csv
import io
import math
from pathlib import Path

from mri_tfdata import atomic, reports
from mri_tfdata.reports import plt
from tuning.hypermodel import head_units

RESULTS_CSV = "results.csv"
PLOT_PNG = "objective.png"
BEST_FLAGS = "best.flags"


def trial_rows(oracle, objective: str) -> list[dict]:
    """One row per trial of `oracle`, in trial order.

    Args:
      oracle: the tuner's oracle (holds every trial, also those of earlier, resumed runs).
      objective: the objective's name, the column of the trial scores.

    Returns:
      Dicts with trial_id, status, the objective, head_units and every hyperparameter.
    """
    rows = []
    for trial_id, trial in sorted(oracle.trials.items(), key=lambda item: int(item[0])):
        values = dict(trial.hyperparameters.values)
        row = {"trial_id": trial_id, "status": trial.status, objective: trial.score}
        row["head_units"] = ",".join(map(str, head_units(values))) if "num_layers" in values else ""
        row.update(sorted(values.items()))
        rows.append(row)
    return rows


def completed_rows(rows: list[dict], objective: str) -> list[dict]:
    """The rows of completed trials with a finite objective, in their order in `rows`."""
    return [r for r in rows if r["status"] == "COMPLETED" and r[objective] is not None
            and math.isfinite(r[objective])]


def best_row(rows: list[dict], objective: str) -> dict | None:
    """The completed trial with the highest objective (the first one on ties), or None."""
    scored = completed_rows(rows, objective)
    return max(scored, key=lambda r: r[objective]) if scored else None


def write_csv(rows: list[dict], path: Path) -> Path:
    """Writes the rows as CSV; columns are the union of all rows' keys, fixed ones first."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic.write_atomic(path, buffer.getvalue())
    return path


def summary(rows: list[dict], objective: str, *, top: int = 5) -> str:
    """A plain-text table of the `top` best completed trials, best first."""
    done = sorted(completed_rows(rows, objective), key=lambda r: -r[objective])
    lines = [f"{len(rows)} trial(s), {len(done)} completed. "
             f"Best {min(top, len(done))} by {objective}:",
             f"{'trial':>6} {objective:>13} {'head_units':>15} {'dropout':>8} "
             f"{'learning_rate':>14} {'batch':>6}"]
    for r in done[:top]:
        lines.append(f"{r['trial_id']:>6} {r[objective]:>13.4f} {r['head_units']:>15} "
                     f"{r.get('dropout', 0):>8.2f} {r.get('learning_rate', float('nan')):>14.3g} "
                     f"{r.get('batch_size', ''):>6}")
    return "\n".join(lines)


def plot(rows: list[dict], objective: str, path: Path) -> Path:
    """Plots the objective against trial number (with the best so far) and learning rate."""
    done = completed_rows(rows, objective)
    ids = [int(r["trial_id"]) for r in done]
    scores = [r[objective] for r in done]
    fig, (by_trial, by_lr) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    by_trial.scatter(ids, scores, s=18, label="trial")
    best, running = -math.inf, []
    for score in scores:
        best = max(best, score)
        running.append(best)
    by_trial.step(ids, running, where="post", color="tab:orange", label="best so far")
    by_trial.set_xlabel("trial")
    by_trial.set_ylabel(objective)
    by_trial.legend(loc="lower right")
    by_lr.scatter([r["learning_rate"] for r in done], scores, s=18)
    by_lr.set_xscale("log")
    by_lr.set_xlabel("learning rate")
    for ax in (by_trial, by_lr):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{objective} of {len(done)} completed trial(s)")
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
