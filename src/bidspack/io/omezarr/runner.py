"""Dask: the local threaded scheduler or a ``dask.distributed`` client."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bidspack.errors import ToolError


def connect(address: str, timeout: float = 10) -> Any:
    """A ``distributed.Client`` connected to the scheduler at *address*
    (``tcp://host:8786``); the caller closes it.

    Raises:
        ToolError: no scheduler answers within *timeout* seconds.
    """
    from distributed import Client

    try:
        return Client(address, set_as_default=False, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ToolError(
            None,
            f"cannot connect to the Dask scheduler at {address} ({exc})",
            hint="start one with 'dask scheduler' and workers with 'dask worker ADDRESS'",
        ) from exc


class TaskRunner:
    """Runs a batch of independent tasks with Dask and returns their results in order.

    ``scheduler`` ``None``: Dask's local threaded scheduler with *workers* threads
    (default: the CPU count); a string with ``://`` (``tcp://host:8786``): a
    ``distributed.Client`` connected to that scheduler for the duration of the write; another
    string: a Dask scheduler name (``"threads"``, ``"synchronous"``); any other object: a
    ``distributed.Client``. With a client, *workers* defaults to the cluster's total
    number of worker threads (it sizes the batches, not the cluster).

    Raises:
        ToolError: the ``dask.distributed`` scheduler cannot be reached (within
            :attr:`connect_timeout` seconds).
        ValueError: *scheduler* is none of the above, or *workers* < 1.
    """

    #: Seconds to wait for a ``dask.distributed`` scheduler given by address.
    connect_timeout = 10

    def __init__(self, scheduler: object, workers: int | None):
        self._own_client = False
        self.client: Any = None
        self.scheduler: str = "threads"
        if isinstance(scheduler, str) and "://" in scheduler:
            self.client = connect(scheduler, self.connect_timeout)
            self._own_client = True
        elif isinstance(scheduler, str):
            self.scheduler = scheduler
        elif scheduler is not None:
            if not hasattr(scheduler, "submit"):
                raise ValueError(f"scheduler must be None, a string or a Client: {scheduler!r}")
            self.client = scheduler
        if workers is None and self.client is not None:
            workers = sum(self.client.nthreads().values()) or 1
        self.workers = workers or os.cpu_count() or 1
        if self.workers < 1:
            self.close()
            raise ValueError(f"workers must be >= 1, not {workers}")

    def map(self, fn: Callable[..., Any], jobs: list[tuple[Any, ...]]) -> list[Any]:
        if not jobs:
            return []
        if self.client is not None:
            futures = [self.client.submit(fn, *args, pure=False) for args in jobs]
            return list(self.client.gather(futures))
        import dask

        tasks = [dask.delayed(fn, pure=False, traverse=False)(*args) for args in jobs]
        return list(dask.compute(*tasks, scheduler=self.scheduler, num_workers=self.workers))

    def close(self) -> None:
        if self._own_client:
            self.client.close()
