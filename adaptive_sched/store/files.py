"""Writing whole files safely: exclusive-create temporary files and an atomic rename.

:func:`write_atomic` is for any file the package writes in one piece (an exported prior,
a manifest): the data goes to a new temporary file in the target's own directory,
created exclusively (``O_EXCL``, never following a symbolic link, under a random name:
:func:`tempfile.mkstemp`), is flushed to disk, then renamed over the target. A reader
sees the old file or the new one, never half of one; a crash leaves the old file (and at
worst a stray ``.NAME.*.tmp``); a symbolic link planted at a predictable temporary name
is never written through.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "prior.json")
>>> write_atomic(path, '{"a": 1}\\n').name
'prior.json'
>>> open(path).read()
'{"a": 1}\\n'
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from pathlib import Path

from ..errors import StoreError


def write_atomic(path: str | Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Replace the file at ``path`` by ``data`` (text is UTF-8), atomically; returns the path.

    Parameters
    ----------
    path : str or Path
        The target. Its directory must exist. If it is a symbolic link, the link is
        replaced by the new file (the file it pointed to is left alone).
    data : bytes or str
    mode : int, default 0o644
        Permission bits of a new file; a file that is replaced keeps its own.

    Raises
    ------
    StoreError
        The file cannot be written (the message names it and says why); the old file,
        if any, is left as it was and no temporary file is left behind.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    directory = path.parent
    try:
        st = path.lstat()
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise StoreError(f"{path}: cannot write the file ({exc.strerror})") from exc
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise StoreError(f"{path}: is a directory")
    if st is not None and stat.S_ISREG(st.st_mode):
        mode = stat.S_IMODE(st.st_mode)
    if not directory.is_dir():
        raise StoreError(f"{path}: directory {directory} does not exist")
    try:
        # O_EXCL | O_NOFOLLOW under a random name, retried on a clash; mode 0600 until done
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create a temporary file in {directory} ({exc.strerror})") from exc
    tmp = Path(tmp_name)
    try:
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StoreError(f"{path}: cannot write the file ({exc.strerror})") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(directory)
    return path


def _fsync_directory(directory: Path) -> None:
    # The rename itself is durable once the directory is flushed (best effort: some file
    # systems do not allow opening a directory).
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


#: the byte of a WAL index (``-shm``) on which every connection using it holds a shared lock
#: (SQLite's ``UNIX_SHM_DMS``: ``(22 + 8) * 4 + 8``)
SHM_DMS_BYTE = 128


def remove_orphaned_wal(path: str | Path) -> bool:
    """Remove ``path-wal`` and ``path-shm`` if ``path`` is gone and no other process uses them.

    After a log file is deleted, SQLite leaves its WAL and WAL index behind (it does not
    delete the WAL of an unlinked database), and a new database created at ``path`` would
    take them for its own. They are removed only when the database file is missing and no
    other process has them open: every connection holds a shared lock on one byte of the
    index, so an exclusive lock on it, tried without waiting, tells. Returns whether
    ``path`` is now free of them (True if there were none).

    The caller must not have the old database open in this process (a process does not
    conflict with its own locks, and closing the descriptor used here drops them).
    """
    path = Path(path)
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if path.exists() or not (wal.exists() or shm.exists()):
        return not wal.exists()
    if shm.exists():
        try:
            fd = os.open(shm, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_DMS_BYTE)
            except OSError:
                return False  # someone still has the deleted database open
            try:
                if path.exists():  # created meanwhile by another process: its files now
                    return not wal.exists()
                for leftover in (wal, shm):
                    with contextlib.suppress(FileNotFoundError):
                        leftover.unlink()
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, SHM_DMS_BYTE)
        finally:
            os.close(fd)
        return True
    # A WAL without its index: no connection can be using it.
    with contextlib.suppress(FileNotFoundError):
        wal.unlink()
    return True
