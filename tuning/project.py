"""A search's folder and this process's part in it: recorded settings, chief or worker role."""

import dataclasses
import json
import os
from pathlib import Path

from mri_tfdata.core import atomic
from mri_tfdata.core.errors import UserError
from tuning import hypermodel, tuners

# The settings a resumed search must share with the search it resumes.
SETTINGS_FILE = "search.json"


def distributed_role() -> str:
    """'single', 'chief' (runs only the oracle) or 'worker', from KerasTuner's environment."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    missing = [v for v in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if v not in os.environ]
    if missing:
        raise UserError(f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not: a "
                        "distributed search needs all three on every process, e.g. "
                        "KERASTUNER_TUNER_ID=chief (or tuner0, tuner1, ...), "
                        "KERASTUNER_ORACLE_IP=10.0.0.1, KERASTUNER_ORACLE_PORT=8000. Unset "
                        "KERASTUNER_ORACLE_IP for a local search.")
    # KerasTuner's own rule (keras_tuner distribute utils): an ID containing "chief" is the oracle.
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def search_settings(*, data, model_spec, policy: str, tuner: str, epochs: int,
                    batch_sizes: tuple[int, ...], train_split: str, validation_split: str,
                    seed: int, executions_per_trial: int) -> dict:
    """Everything that makes trials comparable: a search resumes only with equal settings."""
    return {"data": dataclasses.asdict(data), "precision": policy, "tuner": tuner,
            "epochs": epochs, "batch_sizes": list(batch_sizes), "train_split": train_split,
            "validation_split": validation_split, "seed": seed,
            "executions_per_trial": executions_per_trial,
            # The objective and the space: trials of another are not comparable.
            "objective": tuners.OBJECTIVE.name,
            "space": {"learning_rate": list(hypermodel.LEARNING_RATES),
                      "label_smoothing": list(hypermodel.LABEL_SMOOTHINGS),
                      "weight_decay": list(hypermodel.WEIGHT_DECAYS),
                      "max_layers": hypermodel.MAX_LAYERS},
            # The head sizes are what the search varies.
            "model": {k: v for k, v in dataclasses.asdict(model_spec).items()
                      if k != "head_units"}}


def check_settings(project_dir: Path, settings: dict) -> None:
    """Refuses to resume a search that was made with other data or model settings."""
    path = project_dir / SETTINGS_FILE
    if not path.exists():
        return
    try:
        recorded = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise UserError(f"The search settings file {path} is damaged, so it is unknown whether "
                        f"the search in {project_dir} was made with these settings. Pass "
                        "overwrite=True to delete that search and start afresh, or another "
                        "project_name=NAME.") from None
    changed = sorted(k for k in settings.keys() | recorded.keys()
                     if settings.get(k) != recorded.get(k))
    if changed:
        raise UserError(
            f"{project_dir} holds a search made with other settings ({', '.join(changed)}); its "
            "trials are not comparable with this one's. Pass another project_name=NAME, or "
            "overwrite=True to delete that search and start afresh.")


def _damaged(path: Path) -> str | None:
    """Why KerasTuner could not reload the JSON state file `path`, or None if it can."""
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    return None if isinstance(state, dict) else "not a JSON object"


def check_tuner_files(project_dir: Path) -> None:
    """Refuses a search whose KerasTuner state is damaged, naming the file, before KerasTuner
    reloads it (which ends in a traceback, or for a bad trial.json in a lost trial).

    Both files are written in place by KerasTuner, so a kill or a full disk during a write can
    leave them truncated. Neither can be rebuilt from the other: oracle.json holds the oracle's
    random state and the order trials ended in, trial.json a trial's values and score.
    """
    files = [project_dir / "oracle.json", *sorted(project_dir.glob("trial_*/trial.json"))]
    for path in files:
        if not path.exists():
            continue
        why = _damaged(path)
        if why is not None:
            raise UserError(
                f"The search state file {path} is damaged ({why}), so the search in "
                f"{project_dir} cannot resume. Restore the file from a backup, or pass "
                "overwrite=True to delete this search and start afresh (or another "
                "project_name=NAME to keep it).")


def record_settings(project_dir: Path, settings: dict) -> None:
    """Writes the settings a later run must match to resume this search."""
    project_dir.mkdir(parents=True, exist_ok=True)
    # Atomic: workers may write the same at once.
    atomic.write_atomic(project_dir / SETTINGS_FILE,
                        json.dumps(settings, indent=2, sort_keys=True) + "\n")
