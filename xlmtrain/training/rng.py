"""Per-rank random-number-generator states in checkpoints: the CPU generator and, on CUDA, the device's.

Dropout on CUDA draws from the CUDA generator of the rank's device, on CPU from torch's default generator; a
resumed run continues bit for bit only if both are restored on every rank. Each state is all-gathered ON THE
STRATEGY'S ROOT DEVICE (NCCL refuses CPU tensors; the hook also runs after `fit`, when teardown has moved the
module back to the CPU), stored as a `(world_size, n_bytes)` uint8 tensor, and rank r restores row r.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

CPU_KEY = "xlmtrain_rng"
DEVICE_KEY = "xlmtrain_device_rng"


@dataclass(frozen=True)
class DeviceRng:
    """Get/set of one accelerator generator (the CUDA generator of one device)."""

    get: Callable[[], torch.Tensor]
    set: Callable[[torch.Tensor], None]


def device_rng(device: torch.device) -> DeviceRng | None:
    """The generator dropout draws from on `device`, if it is not the CPU's: CUDA's for a CUDA device."""
    if device.type != "cuda":
        return None
    return DeviceRng(get=lambda: torch.cuda.get_rng_state(device), set=lambda s: torch.cuda.set_rng_state(s, device))


def gather_rng_states(
    gather: Callable[[torch.Tensor], torch.Tensor], root_device: torch.device, world_size: int
) -> dict[str, torch.Tensor]:
    """Every rank's RNG states, `{CPU_KEY: (W, n), DEVICE_KEY: (W, m)}` (the device key only on CUDA), on CPU.

    `gather` is the strategy's all-gather (a matched collective: every rank must call this).
    """

    def everyone(state: torch.Tensor) -> torch.Tensor:
        state = state.to(root_device)
        return (gather(state) if world_size > 1 else state[None]).cpu()

    states = {CPU_KEY: everyone(torch.get_rng_state())}
    accelerator = device_rng(root_device)
    if accelerator is not None:
        states[DEVICE_KEY] = everyone(accelerator.get())
    return states


def restore_rng_states(checkpoint: dict[str, Any], root_device: torch.device, rank: int, world_size: int) -> bool:
    """Set this rank's generators from `gather_rng_states`' output; False (nothing set) when the checkpoint has no
    states or was saved with another world size (the dropout streams cannot then be continued)."""
    cpu = checkpoint.get(CPU_KEY)
    if cpu is None or len(cpu) != world_size:
        return False
    torch.set_rng_state(cpu[rank].clone())
    accelerator = device_rng(root_device)
    saved = checkpoint.get(DEVICE_KEY)
    if accelerator is not None and saved is not None and len(saved) == world_size:
        accelerator.set(saved[rank].clone())
    return True
