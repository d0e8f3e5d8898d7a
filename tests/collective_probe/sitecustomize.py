"""Loaded by `site` in a test's subprocesses (this folder is put on their PYTHONPATH): when
XLMTRAIN_COLLECTIVE_LOG is set, every torch.distributed collective called from Python is logged, one JSON line
per call to `<XLMTRAIN_COLLECTIVE_LOG>.<pid>`: its name, the devices of its tensor inputs, the device Lightning's
strategy would put them on (`cuda:<LOCAL_RANK>` when CUDA is used, else cpu), and the names of the xlmtrain and
Lightning functions on the stack (so a test can tell a collective of `training_step` from one after backward).
DDP's gradient buckets are reduced by its C++ reducer and do not pass through here."""

from __future__ import annotations

import os

if os.environ.get("XLMTRAIN_COLLECTIVE_LOG"):
    import functools
    import json
    import traceback

    import torch
    import torch.distributed as dist

    _LOG = f"{os.environ['XLMTRAIN_COLLECTIVE_LOG']}.{os.getpid()}"
    _NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "barrier", "reduce",
              "reduce_scatter", "reduce_scatter_tensor", "all_gather_object", "broadcast_object_list",
              "gather", "scatter", "all_to_all", "all_to_all_single")  # fmt: skip

    def _tensors(value: object) -> list[torch.Tensor]:
        if isinstance(value, torch.Tensor):
            return [value]
        if isinstance(value, (list, tuple)):
            return [t for v in value for t in _tensors(v)]
        return []

    def _wrap(name: str, fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def logged(*args, **kwargs):  # type: ignore[no-untyped-def]
            stack = [
                f.name for f in traceback.extract_stack()[:-1] if "xlmtrain" in f.filename or "lightning" in f.filename
            ]
            devices = [str(t.device) for t in _tensors(list(args) + list(kwargs.values()))]
            with open(_LOG, "a") as out:
                out.write(json.dumps({"name": name, "devices": devices, "stack": stack}) + "\n")
            return fn(*args, **kwargs)

        return logged

    for _name in _NAMES:
        if hasattr(dist, _name):
            setattr(dist, _name, _wrap(_name, getattr(dist, _name)))
    # Lightning and torchmetrics bound some of them at import through `torch.distributed.<name>` attribute access,
    # which sees the wrapper; `from torch.distributed import x` done before this file ran would not (none is).
