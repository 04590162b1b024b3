"""The run's output directory: never clobbered without ``--force``, locked while a run uses it."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import CompressError
from .io import atomic_write_text

__all__ = ["prepare_out_dir", "undo_prepare", "OutDirLock", "MARKER", "LOCK"]

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
        """Take the lock; raise :class:`CompressError` while a live process holds it."""
        for _ in range(3):  # a stale lock is removed and the link retried
            if self._link():
                self.held = True
                return
            try:
                pid = int(self.path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise CompressError(f"{self.path.parent}: another compress run (pid {pid}) is using this output "
                                    "directory; wait for it or choose another --out") from None
            self.path.unlink(missing_ok=True)  # stale: its owner died
        raise CompressError(f"{self.path}: cannot take the lock (it keeps reappearing); another run is starting here")

    def _link(self) -> bool:
        """Create the lock file with our pid already in it: write a private file, then hard-link it into place.

        ``os.link`` fails when the lock exists, so creation is exclusive, and a reader never sees an empty lock
        (which an ``O_EXCL`` create followed by a write would show for a moment).
        """
        mine = self.path.with_name(f"{LOCK}.{os.getpid()}")
        atomic_write_text(mine, str(os.getpid()))
        try:
            os.link(mine, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            return self._create()
        finally:
            mine.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
        return True

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
        protected: user files and directories (checkpoint, data root) never to be inside a directory we delete.

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
                if path and (resolved == Path(path).resolve() or resolved in Path(path).resolve().parents):
                    raise CompressError(f"--out {out}: holds {path}, which this run reads; refusing to delete it "
                                        "(choose another --out)")
            OutDirLock(out).acquire()  # refuses while another run uses it; released by the rmtree
            shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / MARKER, "created by compress.run\n")
    except OSError as err:
        raise CompressError(f"--out {out}: cannot create the output directory ({err.strerror or err})") from None
    return out


def undo_prepare(out_dir: str | Path, *, created: bool) -> None:
    """Undo :func:`prepare_out_dir` for a new run that failed before writing any output.

    Removes the marker, and the directory itself when this run ``created`` it and it is now empty (call after
    the lock is released). A user's files in a reused directory are never touched.
    """
    out = Path(out_dir)
    (out / MARKER).unlink(missing_ok=True)
    if created:
        try:
            out.rmdir()
        except OSError:  # not empty (or already gone): leave it
            pass
