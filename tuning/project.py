"""A search's folder and this process's part in it: recorded settings, chief or worker role."""

import json
import os
from pathlib import Path

from mri_tfdata import atomic
from mri_tfdata.errors import UserError

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


def check_settings(project_dir: Path, settings: dict) -> None:
    """Refuses to resume a search that was made with other data or model settings."""
    path = project_dir / SETTINGS_FILE
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    changed = sorted(k for k in settings.keys() | recorded.keys()
                     if settings.get(k) != recorded.get(k))
    if changed:
        raise UserError(
            f"{project_dir} holds a search made with other settings ({', '.join(changed)}); its "
            "trials are not comparable with this one's. Pass another --project_name, or "
            "--overwrite to delete that search and start afresh.")


def record_settings(project_dir: Path, settings: dict) -> None:
    """Writes the settings a later run must match to resume this search."""
    project_dir.mkdir(parents=True, exist_ok=True)
    # Atomic: workers may write the same at once.
    atomic.write_atomic(project_dir / SETTINGS_FILE,
                        json.dumps(settings, indent=2, sort_keys=True) + "\n")
