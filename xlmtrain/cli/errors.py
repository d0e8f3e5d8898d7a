"""How the training CLI reports: xlmtrain's own errors as one line, its log in `<run_dir>/train.log`, and no
known-harmless warnings.

xlmtrain's own errors are the ones a user fixes by changing the command, the config or the files: bad config
values, data and checkpoint errors (all `ValueError`s: `ConfigError`, `CheckpointError`, `PreprocessError`,
`DataFormatError`, `RunIdentityError`, `CorruptCheckpointError`, a corrupt manifest, a refused pickle...), missing
files, a run dir held by another training (`RunLockedError`), a run the numerics guard stopped
(`NumericsStopped`), and Ctrl-C outside training. They are printed as `error: <message on one line>` on stderr
with exit code 2 (130 for Ctrl-C); `HYDRA_FULL_ERROR=1` re-raises them for the full
traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def is_own_error(error: BaseException) -> bool:
    """Whether `error` is reported as one line. The training-side types are imported only when the common ones do
    not match: a config error is reported without importing Lightning (the CLI checks the config first)."""
    if isinstance(error, (ValueError, FileNotFoundError, KeyboardInterrupt)):
        return True
    from xlmtrain.training.numerics import NumericsStopped
    from xlmtrain.training.run_lock import RunLockedError

    return isinstance(error, (RunLockedError, NumericsStopped))


@dataclass
class Outcome:
    """What `one_line_errors` caught (None: nothing)."""

    error: BaseException | None = None


def one_line(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


@contextmanager
def one_line_errors() -> Iterator[Outcome]:
    """Report xlmtrain's own errors (and Ctrl-C) raised in the block as one line; see the module docstring."""
    outcome = Outcome()
    try:
        yield outcome
    except BaseException as error:
        if not is_own_error(error) or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        outcome.error = error
        message = "interrupted (Ctrl-C)" if isinstance(error, KeyboardInterrupt) else one_line(error)
        # Not logged to train.log: a refused start must leave the run dir it was refused on untouched.
        print(f"error: {message}", file=sys.stderr, flush=True)


def route_lightning_logs() -> None:
    """Lightning gives its logger its own console handler and stops it propagating when it is imported before
    logging is configured (always, here): hand it back to the root logger, so its messages land in train.log."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True


def quiet_known_noise() -> None:
    """Silence warnings every run printed that need no action (each explained here, once)."""
    # Lightning sees `srun` on PATH and suspects a SLURM job started without it. Inside a job the sbatch
    # templates do use srun; outside one the hint is wrong.
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    # Lightning's pytree helper calls an API torch 2.13 deprecated; nothing for a user to do.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    # A resumed run writes into its own checkpoint dir (the run dir lock and identity check make sure it is its).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
