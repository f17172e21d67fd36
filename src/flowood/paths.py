"""Output directories: one check, so every command refuses the same mistakes the same way."""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_output_dir"]


def check_output_dir(path: str | Path, create: bool = False) -> Path:
    """``path`` as a directory that can be written: refuse an existing file (or a file where a parent
    folder should be) with a message naming it; create it if ``create``."""
    path = Path(path)
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"output path {path}: {parent} is a file, not a directory; choose another --out")
            break
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
