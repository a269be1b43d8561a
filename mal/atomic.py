"""Files that appear whole or not at all: written beside the target, fsync'ed, renamed into place."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file/folder: 0666/0777 less the umask (0644/0755
    under umask 022). ``tempfile`` creates private ones (0600/0700); what mal publishes gets this."""
    mask = os.umask(0)  # reading the umask means setting it: set straight back
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside ``path`` for a library that writes files by name (e.g. safetensors'
    ``save_file``); renamed into place with :func:`default_mode` when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file that appears at ``path`` only when the block ends without error: written to a
    temporary file beside it, fsync'ed, renamed into place, and the rename made durable. The file
    gets the mode ``open()`` would give it (0666 less the umask: 0644 under umask 022), not
    ``mkstemp``'s private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json_atomic(obj, path: str | Path) -> None:
    """Write JSON through :func:`atomic_file`: readers never see a half-written file, and a crash
    leaves the old file (or none)."""
    with atomic_file(Path(path)) as f:
        text = io.TextIOWrapper(f, encoding="utf-8")
        json.dump(obj, text)
        text.flush()
        text.detach()  # leave the binary file open for atomic_file to fsync and close


def write_text_atomic(text: str, path: str | Path) -> None:
    """Write UTF-8 text through :func:`atomic_file`."""
    with atomic_file(Path(path)) as f:
        f.write(text.encode("utf-8"))
