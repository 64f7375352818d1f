"""Dynamic batching: rows from concurrent requests run through the model together.

Each request submits its rows (preprocessed images) and awaits their results. A single
collector task takes the first waiting row, then keeps taking rows until ``max_batch`` are
gathered or ``max_wait`` seconds have passed since the first, and runs the batch in one worker
thread. The model therefore never runs twice at once (one stream of work on a GPU, no
re-entrancy in the backbone), requests that arrive within a few milliseconds share a forward
pass, and a request with more rows than ``max_batch`` is spread over several batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from torch import Tensor

from fewclip.errors import FewclipError, InvalidValueError

__all__ = ["BatcherStopped", "DynamicBatcher"]


class BatcherStopped(FewclipError, RuntimeError):
    """Rows submitted to a batcher that is not running (not started yet, or shutting down)."""


T = TypeVar("T")


class DynamicBatcher:
    """Run ``fn`` ((B, ...) tensor → (B, ...) tensor) on batches of rows gathered from
    concurrent :meth:`submit` calls; ``on_batch(size)`` is called for every batch run."""

    def __init__(
        self,
        fn: Callable[[Tensor], Tensor],
        *,
        max_batch: int,
        max_wait: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise InvalidValueError(f"max_batch: expected a positive integer, found {max_batch}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[Tensor, asyncio.Future[tuple[Tensor, int]]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fewclip-model")

    async def start(self) -> None:
        """Start the collector on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect())

    async def stop(self) -> None:
        """Stop the collector and the worker thread (rows still waiting get an error)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            while not self._queue.empty():
                _, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(BatcherStopped("the server is shutting down"))
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the model's worker thread (between batches)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def submit(self, rows: Tensor) -> tuple[Tensor, list[int]]:
        """The results of ``fn`` for ``rows`` (in order) and the sizes of the batches they
        went into (one entry per row)."""
        if self._queue is None:
            raise BatcherStopped("DynamicBatcher.submit before start()")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(len(rows))]
        for row, fut in zip(rows, futures, strict=True):
            self._queue.put_nowait((row, fut))
        done = await asyncio.gather(*futures)
        results = [r for r, _ in done]
        sizes = [s for _, s in done]
        return (torch.stack(results) if results else rows[:0]), sizes

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            live = [(row, fut) for row, fut in batch if not fut.cancelled()]
            if not live:
                continue
            try:
                out = await self.run(self.fn, torch.stack([row for row, _ in live]))
            except Exception as e:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            for i, (_, fut) in enumerate(live):
                if not fut.done():
                    fut.set_result((out[i], len(live)))
