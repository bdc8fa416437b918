"""Ray and its ClientApp actors kept warm across runs in one process.

Flower's Ray backend starts an actor pool for every run and, at its end, kills the
actors and shuts Ray down, so each run in a notebook, a test suite or a Hydra multirun
with the basic launcher paid Ray's start-up and every actor's imports (torch, Flower,
fedpriv) again. Flower exposes no setting for this, so :func:`warm_backend` patches two
methods of ``RayBackend`` for the length of one run: ``build`` reuses the pool of an
earlier run with the same resources, and ``terminate`` leaves Ray and the pool up. The
actors hold nothing of a run between messages (Flower passes the app and the node's
context with every message), so what stays warm is only the imported code.

Everything is stopped at the interpreter's exit, or by :func:`shutdown` (a run that
failed or was interrupted calls it). A run attached to a running cluster
(``engine.ray_address``) keeps the same warm state; other init arguments (the local
engine, another cluster) stop our actors there and detach, leaving the cluster up.
The patch checks the Flower methods it replaces and fails loudly if they change.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("fedpriv")

#: The warm state: Ray's init arguments, and the pool with the resources it was made for.
_warm: dict[str, Any] = {}


def _ray_backend() -> Any:
    from flwr.server.superlink.fleet.vce.backend import raybackend

    cls = raybackend.RayBackend
    missing = [name for name in ("build", "terminate", "init_ray") if not hasattr(cls, name)]
    if missing:
        raise RuntimeError(
            f"Flower's RayBackend no longer has {missing}: fedpriv.runtime.warm_ray must "
            "follow Flower's change (or remove the warm engine)"
        )
    return cls


def _pool_key(backend: Any) -> tuple[Any, ...]:
    return (
        tuple(sorted(backend.client_resources.items())),
        tuple(sorted((k, repr(v)) for k, v in backend.actor_kwargs.items())),
    )


@contextlib.contextmanager
def warm_backend(init_args: dict[str, Any]) -> Iterator[None]:
    """Within this block, Flower's Ray backend reuses the Ray instance and actor pool of
    an earlier run in this process (when ``init_args`` and the client resources match)
    and leaves them up when the run ends."""
    import ray

    cls = _ray_backend()
    if not _warm.get("exit_hook"):  # after Ray's own, so it runs first at exit
        atexit.register(shutdown)
        _warm["exit_hook"] = True
    if _warm.get("init_args") != init_args:
        shutdown()  # other cores or settings: a fresh Ray
    original_build, original_terminate = cls.build, cls.terminate

    def build(self: Any, app_fn: Any) -> None:
        key = _pool_key(self)
        if _warm.get("pool_key") == key and ray.is_initialized():
            self.pool, self.app_fn = _warm["pool"], app_fn
            log.debug("reusing %d warm ClientApp actors", self.pool.num_actors)
            return
        _stop_pool()
        original_build(self, app_fn)
        _warm.update(pool=self.pool, pool_key=key)

    def terminate(self: Any) -> None:
        """Leave Ray and the actors up for the next run; :func:`shutdown` stops them."""

    cls.build, cls.terminate = build, terminate
    try:
        yield
        _warm["init_args"] = init_args
    except BaseException:
        shutdown()  # a failed or interrupted run leaves nothing running
        raise
    finally:
        cls.build, cls.terminate = original_build, original_terminate


def _stop_pool() -> None:
    pool = _warm.pop("pool", None)
    _warm.pop("pool_key", None)
    if pool is not None:
        pool.terminate_all_actors()


def shutdown() -> None:
    """Stop the warm actors and Ray if this process started it (an attached cluster is
    only detached from)."""
    _stop_pool()
    _warm.pop("init_args", None)
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
