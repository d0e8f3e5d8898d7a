"""metrics.csv after a restart: rows past the resumed checkpoint are dropped, nothing else."""

from __future__ import annotations

from pathlib import Path

from xlmtrain.training.resume import truncate_metrics_csv

CSV = """lr,step,train_loss,valid_ppl
0.1,1,5.0,
0.1,2,4.0,
,2,,90.0
0.1,3,3.0,
0.1,4,2.5,
,4,,50.0
0.1,5,2.0,
"""


def test_rows_from_the_resume_step_on_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text(CSV)
    # Checkpoint after 2 optimizer steps: its validation (also step 2) stays, steps 3.. are redone.
    assert truncate_metrics_csv(path, 2) == 4
    assert path.read_text() == "".join(CSV.splitlines(keepends=True)[:4])
    assert truncate_metrics_csv(path, 2) == 0 and path.read_text().count("\n") == 4
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left behind


def test_missing_file_is_left_missing(tmp_path: Path) -> None:
    assert truncate_metrics_csv(tmp_path / "metrics.csv", 3) == 0
    assert not (tmp_path / "metrics.csv").exists()
