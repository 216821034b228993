"""Writing the files XBench produces (run directories, converted checkpoints).

A write that fails (disk full, a read-only folder, no permission) is one typed error naming the
file and what to do, never a traceback, and leaves no temporary file behind; what was written
before stays. A finished file gets the permissions of any file the user creates (the umask), not
the 0600 that temporary files (and safetensors) are created with.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import XBenchError

_REASONS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied"}


@contextlib.contextmanager
def writing(path: str | os.PathLike, *, temporary: str | os.PathLike | None = None,
            advice: str = "free some space (or choose another --out) and run the same command again: "
                          "finished records are kept") -> Iterator[None]:
    """Turn a failed write of `path` into an XBenchError; remove `temporary` when it fails."""
    try:
        yield
    except XBenchError:
        raise
    except Exception as exc:  # OSError, and safetensors' own error type for the same causes
        if temporary is not None:
            with contextlib.suppress(OSError):
                Path(temporary).unlink()
        code = getattr(exc, "errno", None)
        text = str(exc)
        reason = (_REASONS.get(code) if isinstance(code, int) else None) or ("no space left on device" if "No space left" in text
                                        else f"{type(exc).__name__}: {text}")
        raise XBenchError(f"cannot write {path}: {reason}; {advice}") from exc


def publish(temporary: str | os.PathLike, target: str | os.PathLike) -> None:
    """Give a finished temporary file the user's usual permissions and move it into place."""
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, target)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask
