"""Writing a whole file at once (the SVG and HTML pictures the CLI writes)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from retune.errors import InvalidArgument

__all__ = ["write_text_file"]


def write_text_file(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` whole or not at all (a temporary file beside it,
    renamed into place); an unwritable path is ``InvalidArgument``, naming it."""
    target = Path(path)
    try:
        fd, temporary = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
        )
    except OSError as e:
        raise InvalidArgument(f"cannot write {path}: {e.strerror or e}") from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)  # as open() would make it, not mkstemp's 0600
        os.replace(temporary, target)
    except OSError as e:
        Path(temporary).unlink(missing_ok=True)
        raise InvalidArgument(f"cannot write {path}: {e.strerror or e}") from e
