"""Cancellation and resource failures, as types (never recognised by their message text).

Every cancellable operation (sliding-window inference, a download, training, feature extraction, a background
run) raises a subclass of ``Cancelled`` when its ``threading.Event`` is set, so callers (the worker, the widgets,
the command line) catch one type.
"""

from __future__ import annotations

import threading


class Cancelled(Exception):
    """The user (or the caller's cancel event) stopped the operation; it produced nothing."""


def raise_if_cancelled(cancel: threading.Event | None, what: str, kind: type[Cancelled] = Cancelled) -> None:
    """Raise ``kind`` (a ``Cancelled`` subclass) naming ``what`` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise kind(f"{what} cancelled")


# torch reports a failed CPU allocation as a plain RuntimeError from its allocator (torch 2.x has no type for it);
# GPU allocation failures are torch.OutOfMemoryError.
_CPU_ALLOCATOR_MESSAGE = "DefaultCPUAllocator: can't allocate memory"


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` means the machine or the GPU ran out of memory: ``MemoryError``,
    ``torch.OutOfMemoryError`` (CUDA, also ``torch.cuda.OutOfMemoryError``), or torch's CPU allocator failure."""
    if isinstance(error, MemoryError):
        return True
    import sys

    torch = sys.modules.get("torch")  # only torch raises the others; never import it just to look
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and _CPU_ALLOCATOR_MESSAGE in str(error)
