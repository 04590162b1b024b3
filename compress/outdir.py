"""The run's output directory: never clobbered without ``--force``, locked while a run uses it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import CompressError

__all__ = ["prepare_out_dir", "OutDirLock", "MARKER"]

MARKER = ".compress-run"  # present in every directory a run created; --force only deletes such directories
LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutDirLock:
    """A lock file holding the owner's pid; a stale lock (dead pid) is taken over."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / LOCK
        self.held = False

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise CompressError(f"{self.path.parent}: another compress run (pid {pid}) is using this output "
                                    "directory; wait for it or choose another --out") from None
            self.path.unlink(missing_ok=True)  # stale: its owner died
            return self.acquire()
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        self.held = True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "OutDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def prepare_out_dir(out_dir: str | Path, *, force: bool = False, resume: bool = False,
                    protected: tuple[str | Path, ...] = ()) -> Path:
    """Create ``out_dir`` for a new run (or check it for ``resume``).

    Args:
        out_dir: the directory.
        force: allow reusing a non-empty directory; one created by an earlier run is emptied first.
        resume: the directory must hold an earlier run; nothing is deleted.
        protected: user files (checkpoints, data) that must never be inside a directory we delete.

    Raises:
        CompressError: the directory holds outputs and neither ``force`` nor ``resume`` is set, or resume finds
            no earlier run.
    """
    out = Path(out_dir)
    if resume:
        if not (out / MARKER).is_file():
            raise CompressError(f"--resume {out}: no earlier compress run there (missing {MARKER})")
        return out
    if out.exists() and not out.is_dir():
        raise CompressError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise CompressError(f"--out {out}: directory exists and is not empty; pass --force to replace it, "
                                "--resume to continue the run in it, or choose another --out")
        if (out / MARKER).is_file():
            resolved = out.resolve()
            for path in protected:
                if path and resolved in Path(path).resolve().parents:
                    raise CompressError(f"--out {out}: holds {path}, a file this run reads; refusing to delete it")
            OutDirLock(out).acquire()  # refuses while another run uses it; released by the rmtree
            shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("created by compress.run\n")
    return out
