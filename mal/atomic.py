"""Files that appear whole or not at all: written beside the target, fsync'ed, renamed into place."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path



@contextlib.contextmanager
def atomic_file(path: Path):
    """A binary file that appears at ``path`` only when the block ends without error: written to a
    temporary file beside it, fsync'ed, renamed into place, and the rename made durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json_atomic(obj, path: str | Path) -> None:
    """Write JSON through :func:`atomic_file`: readers never see a half-written file, and a crash
    leaves the old file (or none)."""
    with atomic_file(Path(path)) as f:
        text = io.TextIOWrapper(f, encoding="utf-8")
        json.dump(obj, text)
        text.flush()
        text.detach()  # leave the binary file open for atomic_file to fsync and close


def write_text_atomic(text: str, path: str | Path, mode: int | None = None) -> None:
    """Write UTF-8 text through :func:`atomic_file`. ``mode``: the file's permissions (the temporary
    file is created 0600; e.g. 0o644 for a page others should read)."""
    with atomic_file(Path(path)) as f:
        if mode is not None:
            os.fchmod(f.fileno(), mode)
        f.write(text.encode("utf-8"))
