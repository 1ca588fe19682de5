"""Files and folders only their owner can read: 0600 and 0700, whatever the umask.

Everything dsrflow creates that can hold personal data or keys goes through here: the
SQLite ledger (its -wal and -shm files take the main file's mode), Prefect's home, the
collected records waiting for a package, local packages and the support outbox, signed
certificates, connectors' checkpoints, key files and the demo's folder. The mode is set
explicitly (`chmod` after creating), so a permissive umask (022) does not widen it; what
already exists is left as it is.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """`path` as a folder, creating it and any missing parents 0700. Folders that exist
    keep their mode."""
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=DIR_MODE)
            os.chmod(folder, DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty and 0600 if it does not exist (its folder 0700 if missing); an
    existing file is left as it is. For files another library opens afterwards (SQLite)."""
    private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    except FileExistsError:
        return path
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


def write_private(path: Path, data: bytes) -> Path:
    """Write `data` to `path` (0600) atomically: a temporary file beside it (mkstemp: 0600
    from the start), then a rename, so a crash never leaves half a file under the final
    name."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
