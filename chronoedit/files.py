"""Writing files safely — the one place for it: where an output may go, atomic writes, and the output lock.

* :func:`check_output_location` — before anything is created: the path is not a file, not under a file, its
  folder is writable (a real probe: a temporary file created and removed, which also catches a read-only file
  system for root), and, when the size is known, the file system has room. One :class:`OutputError` line.
* :func:`atomic_path` / :func:`atomic_dir` — write under ``<name>.tmp`` in the same folder, then ``os.replace``:
  a reader never sees half a file under the final name, even when the writer is killed (a leftover ``.tmp`` is
  never taken for whole, and the next write of the same name replaces it).
* :func:`lock_output` — one process per output folder: ``fcntl.flock`` on ``.<name>.lock`` next to the folder
  (so the folder itself stays as the user left it), released on exit — even on SIGKILL, by the kernel.
* :func:`claim_output_dir` — all three for an entry point's output folder (one call).
* :func:`parse_position` / :func:`read_jsonl` — JSON and YAML errors that say where (line and column).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

TMP_SUFFIX = ".tmp"
SPACE_MARGIN = 1 << 20  # bytes kept free beyond what a write needs (headers, the file system's own metadata)


class OutputError(ValueError):
    """An output location that cannot be written; the message is one line naming the path and the cause."""


def _size(n: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} B"


def _existing_ancestor(path: Path) -> Path:
    """``path`` itself if it exists, else its nearest ancestor that does (a file or a folder)."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path("/")


def probe_writable(folder: Path) -> str | None:
    """None if a file can be created in ``folder``, else why not (e.g. "Read-only file system"). A real probe:
    permission bits mean nothing to root, while a read-only mount or an immutable folder refuses root too."""
    try:
        fd, name = tempfile.mkstemp(prefix=".chronoedit-probe-", dir=folder)
    except OSError as e:
        return e.strerror or type(e).__name__
    os.close(fd)
    os.unlink(name)
    return None


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``folder``'s file system (None: the system cannot say)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def check_output_location(path: str | os.PathLike, *, need_bytes: int = 0, what: str = "output") -> Path:
    """Raise :class:`OutputError` unless ``path`` can be made (or is) a folder this process can write into, with
    ``need_bytes`` free (0: unknown, not checked). Creates nothing; returns ``path`` as a Path."""
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    if os.path.islink(absolute) and not absolute.exists():
        raise OutputError(f"{what} {path} is a broken symbolic link (to {os.readlink(absolute)})")
    found = _existing_ancestor(absolute)
    if not found.is_dir():
        if found == absolute:
            raise OutputError(f"{what} {path} exists and is not a folder")
        raise OutputError(f"{what} {path} is under {found}, which is a file, not a folder")
    why = probe_writable(found)
    if why is not None:
        where = "" if found == absolute else f" (its nearest existing folder {found})"
        raise OutputError(f"{what} {path}{where} is not writable: {why}")
    if need_bytes > 0:
        free = free_bytes(found)
        if free is not None and free < need_bytes + SPACE_MARGIN:
            raise OutputError(f"{what} {path}: not enough free space ({_size(need_bytes)} needed, {_size(free)} free)")
    return path


def check_free_space(path: str | os.PathLike, need_bytes: int, what: str = "output") -> None:
    """:class:`OutputError` unless the file system ``path`` (a file or folder to be written) is on has room."""
    found = _existing_ancestor(Path(os.path.abspath(path)))
    free = free_bytes(found if found.is_dir() else found.parent)
    if free is not None and free < need_bytes + SPACE_MARGIN:
        raise OutputError(f"{what} {path}: not enough free space ({_size(need_bytes)} needed, {_size(free)} free)")


# ---------------------------------------------------------------------------------------------- atomic writes


def temp_path(path: str | os.PathLike, keep_suffix: bool = False) -> Path:
    """The temporary name ``path`` is written under: ``<name>.tmp`` (``<stem>.tmp<suffix>`` with ``keep_suffix``,
    for writers that pick the format from the extension)."""
    path = Path(path)
    return path.with_name(f"{path.stem}{TMP_SUFFIX}{path.suffix}" if keep_suffix else path.name + TMP_SUFFIX)


def fsync_path(path: Path) -> None:
    """Flush a file or a folder (its entries) to disk; best effort (some filesystems refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, keep_suffix: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds the file written there is flushed to disk
    and renamed to ``path`` (``os.replace``: atomic on POSIX), when it fails it is removed. So ``path`` is either
    absent, its old content, or the whole new file — never half of it::

        with atomic_path(out / "edit.png") as tmp:
            image.save(tmp, format="PNG")
    """
    path = Path(path)
    tmp = temp_path(path, keep_suffix)
    _remove(tmp)  # a leftover of a write that was killed
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(errno.ENOENT, "the writer produced no file", str(tmp))
        if fsync:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    if fsync:
        fsync_path(path.parent)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Like :func:`atomic_path` for a folder: filled under ``<name>.tmp/``, then put in place of ``path`` (an old
    ``path`` is moved aside and removed only after the new one is in place)."""
    path = Path(path)
    tmp = temp_path(path)
    _remove(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if fsync:
            for p in tmp.iterdir():
                fsync_path(p)
            fsync_path(tmp)
        old = path.with_name(path.name + ".old")
        if os.path.lexists(path):
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    except BaseException:
        _remove(tmp)
        raise
    if fsync:
        fsync_path(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """``path.write_bytes(data)``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# ---------------------------------------------------------------------------------------------- the output lock


class OutputLock:
    """An exclusive ``flock`` on an output folder, held by this process until :meth:`release` or exit."""

    def __init__(self, folder: Path, lock_file: Path | None, fd: int) -> None:
        self.folder, self.lock_file, self._fd = folder, lock_file, fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd < 0:
            return
        if self.lock_file is not None:  # unlinked while still locked: a waiting process then re-opens a new file
            with contextlib.suppress(OSError):
                os.unlink(self.lock_file)
        os.close(self._fd)
        self._fd = -1
        _HELD.pop(str(self.folder), None)


_HELD: dict[str, OutputLock] = {}  # folder -> this process's lock on it (a lock lives as long as the process)


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        lock.release()


def lock_file_for(folder: str | os.PathLike) -> Path:
    """Where the lock of ``folder`` lives: ``.<name>.lock`` next to it."""
    folder = Path(os.path.realpath(folder))
    return folder.with_name(f".{folder.name}.lock")


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(lock_file: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock_file.read_text().strip())
        return f"pid {pid}"
    return "another process"


def lock_output(folder: str | os.PathLike, what: str = "output") -> OutputLock:
    """Take the lock of ``folder`` (which need not exist yet) or raise :class:`OutputError` naming its holder.
    Re-entrant within a process. The lock file is ``.<name>.lock`` next to the folder; where that cannot be
    written (a writable folder in a read-only parent) the folder itself is locked."""
    real = Path(os.path.realpath(folder))
    held = _HELD.get(str(real))
    if held is not None and held.held:
        return held
    lock_file = lock_file_for(real)
    if probe_writable(lock_file.parent) is not None and real.is_dir():
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
        if not _try_flock(fd):
            os.close(fd)
            raise OutputError(f"{what} {folder} is in use by another process (it holds a lock on the folder)")
        lock = _HELD[str(real)] = OutputLock(real, None, fd)
        return lock
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):  # the holder may unlink the file between our open and flock: then lock the new one
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd):
            os.close(fd)
            raise OutputError(f"{what} {folder} is in use by {_holder(lock_file)} (lock file {lock_file})")
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_file).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            lock = _HELD[str(real)] = OutputLock(real, lock_file, fd)
            return lock
        os.close(fd)
    raise OutputError(f"{what} {folder}: could not take the lock {lock_file}")


def claim_output_dir(
    folder: str | os.PathLike, *, overwrite: bool = False, need_bytes: int = 0, what: str = "output_dir"
) -> OutputLock:
    """Everything an entry point does before writing into ``folder``: the location is usable
    (:func:`check_output_location`), this process holds its lock (:func:`lock_output`), and the folder is empty
    unless ``overwrite``. Creates nothing but the lock file (next to ``folder``); raises :class:`OutputError`."""
    folder = check_output_location(folder, need_bytes=need_bytes, what=what)
    lock = lock_output(folder, what)
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        lock.release()
        raise OutputError(f"{what} {folder} exists and is not empty (pass overwrite=true to write into it)")
    return lock


# ---------------------------------------------------------------------------------------------- reading JSON


def parse_position(e: Exception) -> str:
    """'line L column C: message' of a JSON or YAML parse error, on one line (``str(e)`` of a YAML error spans
    several; ``e.msg`` of a JSON error drops the position)."""
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno} column {e.colno}: {e.msg}"
    mark = getattr(e, "problem_mark", None)  # yaml.MarkedYAMLError
    if mark is not None:
        return f"line {mark.line + 1} column {mark.column + 1}: {getattr(e, 'problem', None) or type(e).__name__}"
    lines = str(e).splitlines()
    return lines[0] if lines else type(e).__name__


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """(line number, value) of every non-blank line of a JSON-lines file; a line that is not JSON is a ValueError
    ``path:line:column: invalid JSON (message)``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror})") from e
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}:{e.colno}: invalid JSON ({e.msg})") from e


__all__ = [
    "OutputError",
    "OutputLock",
    "atomic_dir",
    "atomic_path",
    "check_free_space",
    "check_output_location",
    "claim_output_dir",
    "lock_file_for",
    "lock_output",
    "parse_position",
    "probe_writable",
    "read_jsonl",
    "temp_path",
    "write_bytes",
    "write_text",
]
