"""Run one function over several parts of a job on threads, for the compiled loops that release the GIL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["in_threads"]

T = TypeVar("T")
R = TypeVar("R")


def in_threads(fn: Callable[[T], R], parts: Sequence[T]) -> list[R]:
    """``[fn(p) for p in parts]``, the first part in this thread and each other part on a thread of its own.

    Results come back in the order of ``parts``, and the first exception is raised here once every
    part has stopped.
    """
    if len(parts) <= 1:
        return [fn(p) for p in parts]
    with ThreadPoolExecutor(len(parts) - 1, thread_name_prefix="cellucid-export-pass") as pool:
        futures = [pool.submit(fn, p) for p in parts[1:]]
        first = fn(parts[0])
        return [first, *(f.result() for f in futures)]
