"""Writing files safely: the engine's one atomic file write.

:func:`write_atomic` replaces a file so that a reader (another process, or the next run after a crash) sees the
old file or the new one, never half of one: the bytes go to a temporary file in the same directory, are flushed
(and fsynced unless told otherwise), the file is given its mode and then ``os.replace``-d over the target. A
failure at any point removes the temporary file and re-raises.

Temporary files are named ``.{path.name}.<random>.tmp`` next to ``path``: a writer killed mid-write leaves such a
file behind, and :mod:`engine.cache` finds and removes those orphans by that prefix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: The mode ``tempfile.mkstemp`` creates a file with (owner read/write only).
PRIVATE = 0o600
#: Readable by everyone, writable by the owner: the mode of files meant to be read (results, reports).
PUBLIC = 0o644


def temp_prefix(path: Path) -> str:
    """The name prefix of ``path``'s temporary files (what a killed writer leaves behind)."""
    return f".{Path(path).name}."


def write_atomic(path: str | Path, data: str | bytes, *, mode: int = PUBLIC, fsync: bool = True) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path``.

    ``data`` is written as is (bytes) or UTF-8-encoded (str), with no newline translation. ``mode`` is the final
    file's permission bits, set with ``chmod`` (so the umask does not narrow them); :data:`PRIVATE` is
    ``mkstemp``'s own mode, so that file is left exactly as ``mkstemp`` made it. ``fsync=False`` skips the fsync (the file is still replaced atomically, but a power loss just after
    may leave it empty). The parent directory is created if missing.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        if mode != PRIVATE:  # mkstemp already made it PRIVATE; no chmod where none is needed
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


__all__ = ["PRIVATE", "PUBLIC", "temp_prefix", "write_atomic"]
