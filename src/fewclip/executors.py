"""Where extraction blocks and benchmark cells run: this process (``local``) or a Ray cluster.

One interface serves both :func:`fewclip.features.extract` and :func:`fewclip.bench.run_bench`:

- :class:`LocalExecutor` (the default) keeps today's behaviour: extraction in this process,
  benchmark cells in this process or in ``jobs`` forked worker processes.
- :class:`RayExecutor` runs a pool of Ray actors. Each actor is built once from a *setup*
  payload (it loads the backbone, or receives a dataset's prepared features) and then works
  through items (shards to encode, cells to run) handed out by this process, the driver.
  Results come back to the driver, which alone writes anything that has a single writer
  (an entry's record, the results JSONL). An actor whose process dies has its item retried on
  another actor, at most ``max_retries`` times per item; a new actor replaces the dead one.

Ray is imported only when a :class:`RayExecutor` is used (the ``ray`` extra). Without an
``address`` it starts a local Ray on this machine; ``address="auto"`` or
``"ray://HOST:10001"`` joins an existing cluster. A Ray that is already initialised in this
process (``ray.init`` called by the user) is used as it is and left running.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

from fewclip.errors import FewclipError, InvalidValueError

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
]

EXECUTORS = ("local", "ray")
"""Names accepted by :func:`make_executor` and the CLI's ``--executor``."""


class ExecutorError(FewclipError, RuntimeError):
    """The executor cannot run the work (Ray missing or unreachable, an item failing on every
    retry, a feature store the workers cannot share)."""


class Executor:
    """Base of the executors; ``name`` is ``"local"`` or ``"ray"``."""

    name = "base"

    def describe(self) -> str:
        """One line for logs and progress messages."""
        return self.name

    def close(self) -> None:
        """Release what the executor started (a local Ray it initialised)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Today's single-machine behaviour: extraction in this process; benchmark cells in this
    process (``jobs=1``) or in ``jobs`` forked CPU worker processes."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise InvalidValueError(f"jobs: expected a positive integer, found {jobs!r}")
        self.jobs = jobs

    def describe(self) -> str:
        return f"local ({self.jobs} job{'s' if self.jobs != 1 else ''})"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(
            "the Ray executor needs Ray, which is not installed: pip install 'fewclip[ray]' "
            "(or use --executor local)"
        ) from None
    return ray


class _Failed:
    """An exception raised by the work itself (not by the worker dying), sent back as a value
    so that Ray does not retry it: the same input would fail the same way."""

    def __init__(self, error: BaseException) -> None:
        try:  # some exceptions cannot be rebuilt on the driver's side
            pickle.loads(pickle.dumps(error))
            self.error = error
        except Exception:
            self.error = RuntimeError(f"{type(error).__name__}: {error}")


class _PoolActor:
    """A Ray actor: ``setup(payload)`` once, then ``work(state, item)`` per item."""

    def __init__(
        self, setup: Callable[[Any], Any], payload: Any, work: Callable[[Any, Any], Any]
    ) -> None:
        self._state = setup(payload)
        self._work = work

    def pid(self) -> int:
        return os.getpid()

    def run(self, item: Any) -> Any:
        try:
            return self._work(self._state, item)
        except Exception as e:
            return _Failed(e)


class RayExecutor(Executor):
    """A pool of Ray actors (see the module docstring).

    Args:
        address: ``None`` starts a local Ray on this machine; ``"auto"`` joins the cluster this
            machine belongs to; ``"ray://HOST:10001"`` connects to a remote head through Ray
            Client.
        workers: actors in a pool; ``None``: one per GPU for GPU work, else one per CPU of the
            cluster (at most the number of items).
        num_cpus: CPUs a local Ray may use when this executor starts it (``None``: all).
        cpus_per_worker: CPUs reserved by each CPU actor (its torch threads).
        max_retries: how many times an item whose worker died is run again, on another actor.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        workers: int | None = None,
        num_cpus: int | None = None,
        cpus_per_worker: float = 1.0,
        max_retries: int = 3,
    ) -> None:
        if workers is not None and (isinstance(workers, bool) or workers < 1):
            raise InvalidValueError(f"workers: expected a positive integer, found {workers!r}")
        if max_retries < 0:
            raise InvalidValueError(f"max_retries: expected >= 0, found {max_retries}")
        if cpus_per_worker <= 0:
            raise InvalidValueError(f"cpus_per_worker: expected > 0, found {cpus_per_worker}")
        self.address = address
        self.workers = workers
        self.num_cpus = num_cpus
        self.cpus_per_worker = float(cpus_per_worker)
        self.max_retries = int(max_retries)
        self._started = False
        self._ray: Any = None

    def describe(self) -> str:
        where = self.address or "a local Ray"
        return f"ray ({where}, {self.workers or 'auto'} workers)"

    # -- connection ---------------------------------------------------------------------
    def ray(self) -> Any:
        """The ``ray`` module, connected (started here when no Ray runs in this process)."""
        if self._ray is not None:
            return self._ray
        ray = _import_ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "logging_level": "ERROR",
                "log_to_driver": True,
            }
            if self.address is None and self.num_cpus is not None:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ExecutorError(
                    f"--ray-address {self.address}: could not connect to a Ray cluster ({e}); "
                    "start one with 'ray start --head', or leave --ray-address out to start a "
                    "local Ray on this machine"
                ) from None
            self._started = True
        self._ray = ray
        return ray

    def close(self) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False
        self._ray = None

    def pool_size(self, n_items: int, *, gpus_per_worker: float = 0.0) -> int:
        """Actors to start for ``n_items`` items (see ``workers``)."""
        if self.workers is not None:
            n = self.workers
        else:
            resources = self.ray().cluster_resources()
            if gpus_per_worker > 0:
                n = int(resources.get("GPU", 0) // gpus_per_worker)
                if n < 1:
                    raise ExecutorError(
                        "the work runs on a GPU but the Ray cluster has none; run the driver "
                        "with --device cpu, or add GPU nodes"
                    )
            else:
                n = int(resources.get("CPU", 1) // self.cpus_per_worker)
        return max(1, min(n, n_items))

    # -- the pool -----------------------------------------------------------------------
    def map(
        self,
        setup: Callable[[Any], Any],
        payload: Any,
        work: Callable[[Any, Any], Any],
        items: Sequence[Any],
        *,
        gpus_per_worker: float = 0.0,
    ) -> Generator[tuple[int, Any], None, None]:
        """Yield ``(i, work(setup(payload), items[i]))`` for every item, in completion order.

        ``setup``, ``work`` and the items must be picklable (module-level functions); the
        payload is put once in Ray's object store and read by each actor when it starts. An
        exception raised by ``work`` is yielded in place of the result (not retried). An item
        whose actor dies is handed to another actor, up to ``max_retries`` times, after which
        :class:`ExecutorError` is raised. Closing the generator early kills the pool.
        """
        if not items:
            return
        ray = self.ray()
        n = self.pool_size(len(items), gpus_per_worker=gpus_per_worker)
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_worker,
            "max_restarts": 0,  # a dead actor is replaced here, and its item retried
            "max_task_retries": 0,
        }
        if gpus_per_worker:
            options["num_gpus"] = gpus_per_worker
        actor_cls = ray.remote(**options)(_PoolActor)
        ref = ray.put(payload)
        actors: list[Any] = []

        def start() -> Any:
            actors.append(actor_cls.remote(setup, ref, work))
            return actors[-1]

        try:
            yield from self._dispatch(ray, [start() for _ in range(n)], start, items)
        finally:
            for a in actors:
                ray.kill(a, no_restart=True)

    def _dispatch(
        self, ray: Any, pool: list[Any], start: Callable[[], Any], items: Sequence[Any]
    ) -> Iterator[Any]:
        from ray.exceptions import ActorUnavailableError, RayActorError, WorkerCrashedError

        queue = deque(range(len(items)))
        idle = deque(pool)
        running: dict[Any, tuple[int, Any]] = {}
        failures = [0] * len(items)
        while queue or running:
            while queue and idle:
                i, actor = queue.popleft(), idle.popleft()
                running[actor.run.remote(items[i])] = (i, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            i, actor = running.pop(ready[0])
            try:
                out = ray.get(ready[0])
            except (RayActorError, WorkerCrashedError, ActorUnavailableError) as e:
                failures[i] += 1
                if failures[i] > self.max_retries:
                    raise ExecutorError(
                        f"item {i} failed on {failures[i]} workers in a row (last: "
                        f"{type(e).__name__}); giving up (a worker dying every time: out of "
                        "memory? raise max_retries or use fewer workers)"
                    ) from None
                queue.appendleft(i)  # first in line for the next free actor ...
                idle.append(start())  # ... and the dead one's replacement is the last
                continue
            idle.append(actor)
            yield i, out.error if isinstance(out, _Failed) else out


def make_executor(
    name: str = "local",
    *,
    address: str | None = None,
    workers: int | None = None,
    jobs: int = 1,
) -> Executor:
    """The executor called ``name`` (``"local"`` or ``"ray"``); ``address`` and ``workers``
    are the Ray executor's, ``jobs`` the local one's."""
    if name == "local":
        if address is not None:
            raise InvalidValueError(
                "--ray-address: a Ray address needs --executor ray (the local executor runs here)"
            )
        return LocalExecutor(jobs)
    if name == "ray":
        return RayExecutor(address, workers=workers)
    raise InvalidValueError(f"--executor: expected one of {', '.join(EXECUTORS)}, found {name!r}")
