"""One run per results directory: an exclusive lock for the run's life, and no silent
replacement of a previous run's results.

Two runs started in the same second used to share Hydra's run directory and truncate
each other's ``metrics.jsonl``; reusing ``output_dir`` replaced a finished run without a
word. A run now holds ``fcntl.flock`` on :data:`LOCK_FILE` in its directory from before
it writes anything until it ends (the kernel releases it if the process dies, so a
killed run leaves no stale lock). A second run on the directory fails at once, naming
the PID that holds it. A directory holding a previous run's files is refused unless
``overwrite=true``, which deletes those files first; ``resume=DIR`` continues the run in
its own directory. Hydra's own files (``.hydra/``, ``run.log``), written before the job
starts, are not a previous run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import IO

from fedpriv.errors import ConfigError

log = logging.getLogger("fedpriv")

#: Held (``flock``) by the run writing the directory; holds that run's PID.
LOCK_FILE = ".fedpriv.lock"
#: What a run writes into its directory (docs/results.md, docs/trackers.md): any of them
#: means a previous run's results, and ``overwrite=true`` deletes exactly these.
RUN_FILES = (
    "config.yaml",
    "provenance.json",
    "clients.json",
    "metrics.jsonl",
    "metrics.influx",
    "alignment.json",
    "checkpoint.npz",
    "checkpoint.pkl",
    "spending.json",
    "summary.json",
    "audit.json",
    "error.txt",
    # The experiment trackers' (logger=csv, tensorboard, mlflow, wandb): directories too.
    "metrics.csv",
    "tensorboard",
    "mlflow.db",
    "wandb",
)


class RunLock:
    """An exclusive ``flock`` on a run directory, held until :meth:`release` (or until
    the process ends)."""

    def __init__(self, directory: Path, handle: IO[str]) -> None:
        self.directory = directory
        self._handle: IO[str] | None = handle

    @classmethod
    def acquire(cls, directory: str | os.PathLike[str]) -> RunLock:
        """Lock ``directory`` (made if missing), or raise ConfigError at once naming the
        PID of the run that holds it. Never waits: a second run must not start late
        into a directory the first is still writing."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        # Opened without truncating: the holder's PID stays readable until we hold it.
        handle = open(path / LOCK_FILE, "a+")  # noqa: SIM115 - held for the run's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ConfigError(
                f"output_dir={str(path)!r} is in use by another fedpriv run (PID {holder}, "
                f"holding {LOCK_FILE}); wait for it to end or choose another output_dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(path, handle)

    def release(self) -> None:
        """Let another run use the directory. The lock file stays: deleting it would let
        a run that opened it just before lock a file no newer run can see."""
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def previous_run_files(directory: Path) -> list[str]:
    """The files of :data:`RUN_FILES` that ``directory`` holds."""
    return [name for name in RUN_FILES if (directory / name).exists()]


def claim(directory: str | os.PathLike[str], *, overwrite: bool, resuming: bool) -> RunLock:
    """Lock ``directory`` for a new run (or for ``resuming`` the run it holds). A previous
    run's files are refused, or deleted first with ``overwrite``."""
    lock = RunLock.acquire(directory)
    found = [] if resuming else previous_run_files(lock.directory)
    if found and not overwrite:
        lock.release()
        raise previous_run_error(lock.directory, found)
    for name in found:
        path = lock.directory / name
        log.warning("overwrite=true: deleting the previous run's %s", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return lock


def check_free(directory: str | os.PathLike[str], *, overwrite: bool) -> None:
    """Refuse now what the process that will write ``directory`` (a deployed ServerApp)
    would refuse when it starts: a directory in use, or a previous run's results without
    ``overwrite``. Deletes nothing; that process claims the directory itself."""
    with RunLock.acquire(directory) as lock:
        found = previous_run_files(lock.directory)
        if found and not overwrite:
            raise previous_run_error(lock.directory, found)


def previous_run_error(directory: Path, found: list[str]) -> ConfigError:
    """The error for a directory holding a previous run's ``found`` files."""
    return ConfigError(
        f"output_dir={str(directory)!r} holds a previous run's results ({', '.join(found)}); "
        "choose another output_dir, set overwrite=true to replace them, or "
        f"resume={directory} to continue an interrupted run"
    )
