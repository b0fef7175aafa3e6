"""Writing files safely: atomic replacement, the user's umask, one-line errors, locks.

Every file landscape writes (checkpoints, metrics, configs, result files, pages, images)
goes through here, so that

* a reader never sees a half-written file: the data go to a temporary file beside the
  target, which is renamed over it only once complete;
* the new file gets the permissions any other program would give it (``0o666`` less the
  umask), not the ``0o600`` of :func:`tempfile.mkstemp`, so colleagues can read results;
* a failed write (full disk, read-only file system, no permission, the target is a
  directory) is one :class:`~landscape.errors.UserError` line naming the file, and
  :func:`check_writable` finds most of these before any work is done;
* two processes never write the same run or result at once (:class:`Lock`).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from landscape.errors import UserError

PathLike = str | os.PathLike

_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EISDIR: "it is a directory",
    errno.ENOTDIR: "a part of the path is not a directory",
    errno.ENAMETOOLONG: "file name too long",
    errno.EFBIG: "file too large for this file system",
}


def write_error(path: PathLike, exc: OSError) -> UserError:
    """The one line that says why ``path`` could not be written."""
    reason = _REASONS.get(exc.errno or -1) or " ".join(str(exc.strerror or exc).split())
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"{reason} writing {path}; free some space and run the same command again")
    return UserError(f"cannot write {path}: {reason}")


@contextmanager
def writing(path: PathLike) -> Iterator[None]:
    """Turn an OSError raised inside the block into :func:`write_error` for ``path``."""
    try:
        yield
    except OSError as exc:
        raise write_error(path, exc) from None


def new_temp(path: PathLike, suffix: str = ".tmp") -> Path:
    """Create an empty, hidden temporary file beside ``path`` and return its name.

    Created with mode 0o666 so that the kernel applies the umask (and any default ACL),
    exactly as for a file opened with ``open(path, "w")``.
    """
    path = Path(path)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def check_writable(path: PathLike, *, directory_ok: bool = False) -> Path:
    """Prove that ``path`` can be written, before any work is done; one line if not.

    Creates missing parent folders and writes (then removes) an empty temporary file beside
    ``path``. Refuses a ``path`` that is a directory unless ``directory_ok``.
    """
    path = Path(path)
    if path.is_dir() and not directory_ok:
        raise UserError(f"cannot write {path}: it is a directory")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        new_temp(path, ".probe").unlink()
    return path


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a fresh temporary file beside ``path``, then rename it into place.

    A reader never sees a half-written file; a failure (a kill, a full disk) leaves the old
    file, or none, and no temporary file. OSErrors become one line naming ``path``.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = new_temp(path)
        try:
            write(tmp)
            fsync(tmp)  # the rename must not reach the disk before the data do
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_line(path: PathLike, line: str) -> None:
    """Append one line with a single write. A kill or a full disk can still tear it; readers
    of such files (``metrics.jsonl``) drop a torn last line."""
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            data = (line.rstrip("\n") + "\n").encode()
            if os.write(fd, data) != len(data):  # a short write: the disk filled up
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        finally:
            os.close(fd)


def fsync(path: Path) -> None:
    """Flush a file's data to the disk (before a rename makes it visible)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Lock:
    """An exclusive ``flock`` on a lock file, held until :meth:`release` or process exit.

    The kernel drops the lock when its process dies, so ``kill -9`` never strands a run:
    a leftover lock file without a holder is simply taken by the next process. The holder
    removes the file on release; a process that locked a file that was removed meanwhile
    notices (the name points to another file, or none) and tries again.
    """

    def __init__(self, path: PathLike, what: str) -> None:
        self.path = Path(path)
        self.what = what  # for the message: "run directory runs/x", "result file out.h5"
        self._fd: int | None = None

    def acquire(self) -> "Lock":
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(100):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_pid(fd)
                    os.close(fd)
                    who = f" (process {holder})" if holder else ""
                    raise UserError(f"{self.what} is in use by another landscape process{who}; wait for it "
                                    "to finish, or choose another output") from None
                except OSError as exc:
                    os.close(fd)
                    if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP):  # some network file systems
                        logging.getLogger("landscape").info(
                            "%s: this file system cannot lock files; nothing stops a second process writing "
                            "the same %s", self.path, self.what)
                        return self
                    raise
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                    self._fd = fd
                    return self
                os.close(fd)  # released and removed by its holder while we waited: take the new one
        raise UserError(f"could not lock {self.path}")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it (see the class doc)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __del__(self) -> None:
        try:
            self.release()  # dropped while held (an abandoned writer): let go, as the process's end would
        except Exception:  # at interpreter exit the modules it needs may be gone; the kernel lets go then
            pass

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None
