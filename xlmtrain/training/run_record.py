"""`<run_dir>/run.json`: what a run used, recorded by the run itself so later jobs never read another run's
config snapshot (`.hydra/`). Sections are merged: each writer owns its own top-level keys."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

RECORD_NAME = "run.json"


def read_run_record(run_dir: Path) -> dict[str, Any]:
    """The run's record ({} when the directory has none: a model dir, or a run older than the record)."""
    path = Path(run_dir) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def record_run(run_dir: Path, **sections: Any) -> Path:
    """Merge `sections` (JSON-serialisable) into `<run_dir>/run.json`, written atomically."""
    path = Path(run_dir) / RECORD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**read_run_record(run_dir), **sections}
    tmp = path.with_name(f".{RECORD_NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
