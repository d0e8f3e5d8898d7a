"""`BackgroundBatches`: build training batches ahead of the step in a background thread, in pinned memory.

On an accelerator the step is launched asynchronously, so the host is idle while the device computes; building
the next batches then (stream choice, row reads from the memory-mapped corpora, masking) takes them off the step's
critical path. The source is iterated by one thread, in order, so what it yields and the state it records
(`PretrainBatches` keys every batch's state by its counter) are exactly those of iterating it directly. Pinned
(page-locked) tensors let Lightning's `non_blocking` copy to the GPU overlap with compute.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from lightning.fabric.utilities.apply_func import apply_to_collection

T = TypeVar("T")


@dataclass
class _Failure:
    error: BaseException


def pin(item: T) -> T:
    """`item` with every tensor (also inside dataclasses, lists, dicts) in pinned memory."""
    return apply_to_collection(item, torch.Tensor, lambda t: t.pin_memory())


class BackgroundBatches(Generic[T]):
    """Iterate `source` in a daemon thread, at most `depth` items ahead of the consumer.

    Args:
        source: any iterable; it is iterated by one thread at a time (a new `iter()` first stops the previous one).
        depth: how many items may wait, built, for the consumer.
        pin_memory: pin every tensor of each item (needs CUDA).

    An exception raised by the source is re-raised to the consumer at the item where it happened.
    """

    def __init__(self, source: Iterable[T], depth: int = 2, pin_memory: bool = False) -> None:
        if depth < 1:
            raise ValueError(f"BackgroundBatches: depth must be >= 1, got {depth}")
        self.source, self.depth, self.pin_memory = source, depth, pin_memory
        self._worker: tuple[threading.Thread, threading.Event] | None = None

    def __iter__(self) -> Iterator[T]:
        self.close()
        items: queue.Queue[T | _Failure] = queue.Queue(self.depth)
        stop = threading.Event()

        def produce() -> None:
            try:
                for item in self.source:
                    if self.pin_memory:
                        item = pin(item)
                    while not stop.is_set():
                        try:
                            items.put(item, timeout=0.05)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as error:  # noqa: BLE001 (handed to the consumer, raised there)
                items.put(_Failure(error))

        thread = threading.Thread(target=produce, name="xlmtrain-batches", daemon=True)
        self._worker = (thread, stop)
        thread.start()
        try:
            while True:
                item = items.get()
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:  # the consumer stopped (end of fit, an error): the worker ends after at most one more item
            self.close()

    def close(self) -> None:
        """Stop the running worker (if any) and wait for it, so the source is never iterated twice at once."""
        if self._worker is not None:
            thread, stop = self._worker
            stop.set()
            thread.join()
            self._worker = None
