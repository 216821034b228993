"""The run directory's lock: two runs writing one directory would duplicate records and overwrite
each other's map shards. A run holds an advisory lock (`fcntl.flock`) on `<run>/.lock` while it
writes; the kernel releases it when the process ends, however it ends, so a lock left by a killed
run is never in the way. The file names the holder (pid, host, start time) for the message.

Processes of one run (torchrun ranks, job-array shards) share the directory: each holds the run
lock shared and its own shard's lock exclusively; a plain run holds the run lock exclusively.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..errors import ConfigError

LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(directory: str | Path, shard: str | None = None) -> Iterator[None]:
    """Hold the run directory for this process (see the module docstring); ConfigError when
    another live process holds it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the run directory {directory} ({exc.strerror}); pass --out DIR where you can write"
        ) from exc
    with contextlib.ExitStack() as stack:
        stack.enter_context(_flock(directory / LOCK_NAME, directory, exclusive=shard is None))
        if shard is not None:
            stack.enter_context(_flock(directory / f".lock-shard-{shard}", directory, exclusive=True))
        yield


@contextlib.contextmanager
def _flock(path: Path, directory: Path, *, exclusive: bool) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks, run unguarded
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"{directory} is in use by another run ({_holder(path)}); wait for it to finish, "
                "or pass --out NEW_DIR"
            ) from None
        if exclusive:
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        yield
        if exclusive:
            os.ftruncate(fd, 0)  # no stale holder named later
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    # a shared run lock has no holder of its own: the shards' lock files name theirs
    for candidate in [path, *sorted(path.parent.glob(".lock-shard-*"))]:
        try:
            h = json.loads(candidate.read_text() or "{}")
        except (OSError, ValueError):
            continue
        if h:
            return f"pid {h.get('pid')} on host {h.get('host')}, started {h.get('started')}"
    return "pid and host unknown"
