"""`<run_dir>/data.json`: the data a pretraining run used (its resolved preprocessed dir and the data settings),
recorded by the run itself so later jobs and tools never read another run's config snapshot (`.hydra/`).
(`run.json` beside it is the run's identity, `training/run_identity.py`.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from xlmtrain.training.checkpoint_io import atomic_write_bytes

DATA_FILE = "data.json"


def read_run_data(run_dir: Path) -> dict[str, Any]:
    """What the run in `run_dir` recorded about its data ({} when it recorded nothing: a model dir, or an older
    run): `resolved_dir`, `dir` (as configured), `synthetic`, `preprocess`, `batching`."""
    path = Path(run_dir) / DATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_run_data(run_dir: Path, data: dict[str, Any]) -> Path:
    """Write `<run_dir>/data.json` atomically."""
    path = Path(run_dir) / DATA_FILE
    atomic_write_bytes((json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode(), path)
    return path
