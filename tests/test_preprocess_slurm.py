"""Sharded preprocessing on a real local SLURM: slurm/preprocess_array.sbatch (learn, an array of shards, the
merge after `afterok`) equals a one-process build id for id."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from slurm_harness import REPO, LocalSlurm, local_slurm  # noqa: F401 (fixture)

from tests.test_preprocess_scale import _corpora, _settings, _write_raw
from xlmtrain.data.pipeline import preprocess
from xlmtrain.data.preprocessed import PreprocessedData

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_array_of_two_shards_then_merge_equals_one_process_build(local_slurm: LocalSlurm, tmp_path: Path) -> None:
    raw = _write_raw(tmp_path / "raw", n_mono=90, n_para=50)
    s = _settings(bpe_sample_mb=0.003)
    preprocess(raw, tmp_path / "single", s)
    out, logs = tmp_path / "sharded", tmp_path / "logs"
    logs.mkdir()
    knobs = [f"input={raw}", f"output={out}", f"bpe_merges={s.bpe_merges}", f"bpe_sample_mb={s.bpe_sample_mb}",
             f"valid_lines={s.valid_lines}", f"test_lines={s.test_lines}", f"chunk_lines={s.chunk_lines}", "workers=1",
             "progress=false"]  # fmt: skip
    env = {"XLMTRAIN_PREPROCESS_CMD": f"{sys.executable} -m xlmtrain.preprocess", "XLMTRAIN_ROOT": str(REPO),
           "SHARD_SBATCH_ARGS": "--cpus-per-task=1 --time=00:10:00"}  # fmt: skip
    driver = local_slurm.run("sbatch", "--parsable", "--cpus-per-task=1", "--time=00:10:00", f"--chdir={logs}",
                             str(REPO / "slurm" / "preprocess_array.sbatch"), "2", *knobs, extra_env=env)  # fmt: skip
    driver_id = driver.stdout.strip().split(";")[0]

    def log() -> str:
        return "\n".join(f"== {p.name}\n{p.read_text()}" for p in sorted(logs.glob("*.out")))

    fields = local_slurm.wait_for(driver_id, 300, JobState={"COMPLETED", "FAILED", "CANCELLED"})
    assert fields["JobState"] == "COMPLETED", log()
    m = re.search(r"shards: job (\d+) \(array of 2\); merge: job (\d+)", log())
    assert m, log()
    # seen right after the driver ends, while the shards run (each takes seconds): the merge waits on them
    pending = local_slurm.job_fields(m[2])
    assert pending["JobState"] == "PENDING" and f"afterok:{m[1]}" in pending.get("Dependency", ""), pending
    merge_fields = local_slurm.wait_for(m[2], 400, JobState={"COMPLETED", "FAILED", "CANCELLED"})
    assert merge_fields["JobState"] == "COMPLETED", log()
    assert len(list(logs.glob(f"xlmtrain-preprocess-shard-{m[1]}_*.out"))) == 2, log()
    assert PreprocessedData(out).manifest["shards"] == 2
    assert _corpora(out) == _corpora(tmp_path / "single")
