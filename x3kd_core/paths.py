"""Where the checkout is, and how a relative file name is looked up (the one place for both).

:data:`REPO_ROOT` is the folder holding ``x3kd_core/`` and ``config/``: the checkout in an
editable install, the installed tree otherwise. :func:`find_file` is the lookup every relative
config / checkpoint name goes through: the first folder, in the order given, that holds the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["REPO_ROOT", "find_file", "resolve_path"]

#: The checkout (or installed tree) holding ``config/``.
REPO_ROOT = Path(__file__).resolve().parent.parent


def find_file(path: str | os.PathLike, folders: Sequence[Path]) -> Optional[Path]:
    """``path`` itself when absolute and a file; else ``<folder>/path`` of the first folder where
    that is a file; None when there is none."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for folder in folders:
        if (Path(folder) / p).is_file():
            return Path(folder) / p
    return None


def resolve_path(path: str, search: Sequence[Path] = ()) -> Path:
    """First existing file among path (absolute), CWD/path, <each search dir>/path, REPO_ROOT/path;
    ``path`` as given when none exists (the caller reports it)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    return find_file(p, (Path.cwd(), *search, REPO_ROOT)) or p
