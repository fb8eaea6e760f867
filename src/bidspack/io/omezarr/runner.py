"""Dask: the local threaded scheduler or a ``dask.distributed`` client."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class TaskRunner:
    """Runs a batch of independent tasks with Dask and returns their results in order.

    ``scheduler`` ``None``: Dask's local threaded scheduler with *workers* threads; a
    string with ``://`` (``tcp://host:8786``): a ``distributed.Client`` connected to that
    scheduler for the duration of the write; another string: a Dask scheduler name
    (``"threads"``, ``"synchronous"``); any other object: a ``distributed.Client``.
    """

    def __init__(self, scheduler: object, workers: int):
        self.workers = workers
        self._own_client = False
        self.client: Any = None
        self.scheduler: str = "threads"
        if isinstance(scheduler, str) and "://" in scheduler:
            from distributed import Client

            self.client = Client(scheduler, set_as_default=False)
            self._own_client = True
        elif isinstance(scheduler, str):
            self.scheduler = scheduler
        elif scheduler is not None:
            if not hasattr(scheduler, "submit"):
                raise ValueError(f"scheduler must be None, a string or a Client: {scheduler!r}")
            self.client = scheduler

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
