"""Run one row of tests/MUTATIONS.md: apply a string replacement, run a pytest selection, restore the file.

    python tests/mutate.py FILE 'OLD' 'NEW' -- tests/test_x.py::test_name [more pytest args]

OLD must occur exactly once in FILE (a row must still apply to the code as it reads). Prints CAUGHT when the
selection fails (pytest exit code 1), NOT CAUGHT when it passes, ERROR otherwise (e.g. nothing collected). The
file is restored whatever happens; `\\n` in OLD/NEW on the command line is a line break, as in the table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") != 3:
        print(__doc__, file=sys.stderr)
        return 2
    path, old, new = REPO / argv[0], argv[1].replace("\\n", "\n"), argv[2].replace("\\n", "\n")
    text = path.read_text()
    if text.count(old) != 1:
        print(f"ERROR: OLD occurs {text.count(old)} times in {argv[0]} (expected once)", file=sys.stderr)
        return 2
    try:
        path.write_text(text.replace(old, new))
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *argv[4:]],
                              cwd=REPO, capture_output=True, text=True)  # fmt: skip
    finally:
        path.write_text(text)
    print("\n".join((done.stdout + done.stderr).strip().splitlines()[-5:]))
    verdict = {0: "NOT CAUGHT", 1: "CAUGHT"}.get(done.returncode, f"ERROR (pytest exit code {done.returncode})")
    print(f"{verdict}: {argv[0]}: {argv[1]!r} -> {argv[2]!r}")
    return 0 if done.returncode == 1 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
