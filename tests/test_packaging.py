"""Set-up as users and CI see it: the README's two commands, CI calling the test command, and a wheel that
carries the Hydra config tree so `python -m xlmtrain` works outside a checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README.md opens with a ```bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    commands = _readme_commands()
    assert commands == ["make demo", "make test"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must call the README's test command"
    makefile = (REPO / "Makefile").read_text()
    assert "python -m xlmtrain +recipe=tlm" in makefile.split("demo:")[1].split("\n\n")[0]
    # torch's CPU wheel is installed before the project, cython before fastbpe (see Makefile comment).
    order = [
        makefile.index(s)
        for s in ("install -q torch==2.13.0", "install -q cython", "--no-build-isolation fastbpe", "-e '.[dev")
    ]
    assert order == sorted(order)


def test_installed_wheel_finds_its_config_tree(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            str(REPO),
            "-w",
            str(tmp_path),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("xlmtrain-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "xlmtrain/conf/xlmtrain.yaml" in names and "xlmtrain/conf/recipe/tlm.yaml" in names
        zf.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [sys.executable, "-m", "xlmtrain", "+recipe=tlm", "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "objective:" in out
    where = subprocess.run(
        [sys.executable, "-c", "import xlmtrain.config_dir as c; print(c.conf_dir())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where == str(site / "xlmtrain" / "conf")
