"""Output folders that cannot destroy input, and files that are either complete or absent.

Every flowood command that writes a folder (``train``, ``evaluate``, ``inspect``, ``reproduce``) opens it
with :func:`open_output_folder` before it loads any data or trains anything. That one call

* refuses folders flowood must never write into: the current directory or one of its ancestors, the home
  directory, a filesystem root, and any folder that is, contains or lies inside one of the command's
  inputs (data folders, ``.npz`` files, checkpoints, configs), so outputs are never read back as inputs;
* refuses a folder that holds files flowood did not write, whatever ``overwrite`` says;
* refuses a folder that holds an earlier flowood output unless ``overwrite`` (or ``resume``) is given, and
  then removes **only the files named in that folder's manifest** (``.flowood-run.json``), never others;
* takes a lock (``.flowood-lock``: the holder's pid, host and start), so one process writes a folder at a
  time; a lock left by a process that no longer runs is taken over with a warning;
* creates the folder and writes to it, so an unwritable path fails in the first second.

Files are written through :func:`atomic_write` (a temporary file in the same folder, then a rename), so a
crash leaves each file complete or absent, and each is recorded in the manifest of the output folder that
holds it before it appears. Append-only logs written by Lightning's loggers (TensorBoard events, CSV
metrics) are recorded by name when the run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowood import __version__
from flowood.errors import FlowoodError

__all__ = ["OutputError", "OutputExistsError", "OutputLockedError", "OutputFolder", "open_output_folder",
           "atomic_write", "write_text_atomic", "save_figure", "check_output_file", "remove_output_folder", "MANIFEST",
           "LOCK", "process_alive"]

MANIFEST = ".flowood-run.json"
LOCK = ".flowood-lock"
_FORMAT = "flowood-output-1"
_TMP_TAG = ".flowood-tmp-"


class OutputError(FlowoodError, ValueError):
    """An output path flowood refuses to write to (it would harm input or files flowood did not write),
    or cannot write to; the message names the reason and the fix."""


class OutputExistsError(OutputError, FileExistsError):
    """The output folder holds an earlier flowood output; replacing it needs ``overwrite=True``."""


class OutputLockedError(OutputError):
    """Another flowood process is writing the same output folder."""


# -- atomic files -------------------------------------------------------------------------------------------------
_ACTIVE: list["OutputFolder"] = []  # open output folders of this process, innermost last


def _record_in_active(path: Path) -> None:
    """Name ``path`` in the manifest of the innermost open output folder that holds it (before it exists)."""
    resolved = path.resolve()
    for folder in reversed(_ACTIVE):
        if resolved.is_relative_to(folder.path) and resolved != folder.path:
            folder.record(resolved)
            return


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without error, move it to ``path``.

    Whatever happens (a crash, a full disk, SIGKILL), ``path`` then holds either its old content or the
    whole new file, never half of one. The temporary file keeps ``path``'s suffix, so writers that choose a
    format by suffix (matplotlib, numpy) still work.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "numbers.txt"
        >>> with atomic_write(target) as tmp:
        ...     _ = tmp.write_text("1 2 3")
        >>> target.read_text()
        '1 2 3'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}{_TMP_TAG}{os.getpid()}{''.join(path.suffixes)}")
    _record_in_active(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_options: Any) -> Path:
    """``fig.savefig`` through :func:`atomic_write` (the format follows ``path``'s suffix)."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, **savefig_options)
    return Path(path)


def _fsync_file(path: Path) -> None:
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


def _fsync_dir(folder: Path) -> None:
    _fsync_file(folder)  # a directory's entries are flushed the same way on POSIX


# -- the lock -----------------------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not mistaken for the lock's holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` runs (and, given its start time, is the same process, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


def _acquire_lock(folder: Path) -> Path:
    lock = folder / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError as exists:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            pid, host = holder.get("pid"), holder.get("host")
            if host == me["host"] and isinstance(pid, int) and not process_alive(pid, holder.get("start")):
                warnings.warn(f"{folder}: took over the lock of flowood process {pid}, which no longer runs "
                              f"(it stopped without finishing, since {holder.get('since', '?')})", stacklevel=3)
                lock.unlink(missing_ok=True)
                continue
            where = f"process {pid} on host {host}" if pid else "another process"
            raise OutputLockedError(f"{folder} is being written by another flowood run ({where}, since "
                                    f"{holder.get('since', '?')}); wait for it to finish or choose another `out`. "
                                    f"If that run is gone (e.g. its machine crashed), delete {lock}") from exists
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return lock
    raise OutputLockedError(f"could not take the lock {lock}; another process keeps taking it")


# -- the manifest -------------------------------------------------------------------------------------------------
@dataclass
class OutputFolder:
    """An output folder opened by :func:`open_output_folder`: locked, and recording what flowood writes.

    Use it as a context manager (or call :meth:`close`) so the lock is released.

    Attributes:
        path: the folder (resolved).
        command: the command writing it (``train``, ``evaluate``, ...).
        files: files written or about to be written, relative to ``path``.
    """

    path: Path
    command: str
    files: list[str] = field(default_factory=list)
    created: str = ""
    _lock: Path | None = None

    def record(self, *paths: str | os.PathLike) -> None:
        """Name files in the manifest (relative to the folder, or absolute inside it) before they are written."""
        changed = False
        for p in paths:
            p = Path(p)
            rel = (p.resolve() if p.is_absolute() else (self.path / p).resolve()).relative_to(self.path).as_posix()
            if rel not in self.files and rel not in (MANIFEST, LOCK):
                self.files.append(rel)
                changed = True
        if changed:
            self._write_manifest()

    def record_tree(self, sub: str | os.PathLike) -> None:
        """Name every file now under ``sub`` (a folder flowood created inside this one)."""
        root = self.path / sub
        if root.is_dir():
            self.record(*(p for p in sorted(root.rglob("*")) if p.is_file() and _TMP_TAG not in p.name))

    def _write_manifest(self) -> None:
        data = {"format": _FORMAT, "command": self.command, "created": self.created,
                "flowood_version": __version__, "files": self.files}
        target = self.path / MANIFEST
        tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, target)

    def close(self) -> None:
        """Release the lock (the manifest stays, so the folder is known as flowood's)."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _FORMAT else None


def _remove_recorded(folder: Path, manifest: dict[str, Any]) -> None:
    """Delete the files the manifest names (never a path outside ``folder``), then folders left empty."""
    parents: set[Path] = set()
    for rel in manifest.get("files", []):
        target = folder / rel
        try:
            inside = target.parent.resolve().is_relative_to(folder)
        except OSError:
            continue
        if not inside or target.is_dir():
            continue
        if target.is_file() or target.is_symlink():
            target.unlink()
        parents.update(p for p in target.parents if p != folder and p.is_relative_to(folder))
    for stale in folder.rglob(f"*{_TMP_TAG}*"):  # temporary files of an interrupted write
        if stale.is_file():
            stale.unlink()
    for p in sorted(parents, key=lambda q: len(q.parts), reverse=True):
        with contextlib.suppress(OSError):
            p.rmdir()  # only if empty


def remove_output_folder(path: str | os.PathLike) -> None:
    """Remove what flowood wrote into an output folder (the files its manifest names, the manifest, and
    folders left empty); files flowood did not write stay. Does nothing if there is no manifest."""
    folder = Path(path).resolve()
    manifest = _read_manifest(folder)
    if manifest is None:
        return
    _remove_recorded(folder, manifest)
    (folder / MANIFEST).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


# -- the checks ---------------------------------------------------------------------------------------------------
def _forbidden_place(real: Path) -> str | None:
    cwd = Path.cwd().resolve()
    if real.parent == real:
        return "it is a filesystem root"
    if real == Path.home().resolve():
        return "it is your home directory"
    if real == cwd:
        return "it is the current directory"
    if cwd.is_relative_to(real):
        return "it holds the current directory"
    return None


def _input_clash(real: Path, inputs: Iterable[str | os.PathLike | None]) -> str | None:
    for item in inputs:
        if item is None:
            continue
        source = Path(item).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        if source == real:
            return f"it is an input of this command ({source})"
        if source.is_relative_to(real):
            return f"it holds an input of this command ({source})"
        if source.is_dir() and real.is_relative_to(source):
            return f"it lies inside the input folder {source}, so outputs could be read back as data"
    return None


def _file_clash(real: Path, inputs: Iterable[str | os.PathLike | None]) -> str | None:
    """Why an output *file* may not be written at ``real``: it is an input, or lies inside an input folder."""
    for item in inputs:
        if item is None or not Path(item).expanduser().exists():
            continue
        source = Path(item).expanduser().resolve()
        if source == real:
            return f"it is an input of this command ({source})"
        if source.is_dir() and real.is_relative_to(source):
            return f"it lies inside the input folder {source}, so outputs could be read back as data"
    return None


def _user_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (MANIFEST, LOCK))


def open_output_folder(path: str | os.PathLike, command: str, inputs: Iterable[str | os.PathLike | None] = (),
                       overwrite: bool = False, resume: bool = False) -> OutputFolder:
    """Check, create, lock and (with ``overwrite``) empty an output folder, before any work starts.

    Args:
        path: the output folder.
        command: the command that writes it; a folder holding another command's output is refused.
        inputs: every file and folder the command reads (data, checkpoints, configs).
        overwrite: replace an earlier output of the same command (only the files it recorded are removed).
        resume: keep an earlier output of the same command and continue it.

    Returns:
        The open :class:`OutputFolder` (a context manager that releases the lock).

    Raises:
        OutputError: the folder is unsafe or not writable; :class:`OutputExistsError` when it holds an earlier
            output and neither ``overwrite`` nor ``resume`` is given; :class:`OutputLockedError` when another
            process writes it.
    """
    given = Path(path).expanduser()
    real = given.resolve()
    reason = _forbidden_place(real) or _input_clash(real, inputs)
    if reason is not None:
        raise OutputError(f"refusing to write into {given}: {reason}. Choose a new folder as `out`, e.g. "
                          "runs/NAME")
    for parent in (real, *real.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write into {given}: {parent} is a file, not a folder; choose another "
                                  "`out`")
            break
    created = not real.exists()
    try:
        real.mkdir(parents=True, exist_ok=True)
        lock = _acquire_lock(real)
    except OSError as err:
        raise OutputError(f"cannot write into {given}: {err.strerror or err}; choose an `out` you can write to") \
            from err
    try:
        folder = _claim(real, given, command, overwrite, resume, lock)
    except BaseException:
        lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                real.rmdir()
        raise
    _ACTIVE.append(folder)
    return folder


def _claim(real: Path, given: Path, command: str, overwrite: bool, resume: bool, lock: Path) -> OutputFolder:
    """Decide what happens to what the folder already holds, and write the new manifest."""
    manifest = _read_manifest(real)
    others = _user_files(real)
    folder = OutputFolder(real, command, created=time.strftime("%Y-%m-%d %H:%M:%S"), _lock=lock)
    if manifest is None:
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise OutputError(f"refusing to write into {given}: it holds files flowood did not write ({shown}), "
                              "and flowood never deletes those. Choose a new or empty folder as `out`")
    elif manifest.get("command") != command:
        raise OutputError(f"refusing to write into {given}: it holds the output of `flowood "
                          f"{manifest.get('command')}`, not of `flowood {command}`. Choose another `out`")
    elif resume:
        folder.files = list(manifest.get("files", []))
        folder.created = manifest.get("created", folder.created)
    elif overwrite:
        _remove_recorded(real, manifest)
    elif others:
        hint = ", `resume=True` to continue it" if command in ("train", "reproduce") else ""
        raise OutputExistsError(f"{given} holds an earlier `flowood {command}` output (from "
                                f"{manifest.get('created', '?')}); pass `overwrite=True` to replace it (only the "
                                f"files flowood wrote there are removed){hint}, or choose another `out`")
    folder._write_manifest()  # also the test that the folder can be written
    return folder


def check_output_file(path: str | os.PathLike, is_flowood_file: Any, inputs: Iterable[str | os.PathLike | None] = (),
                      overwrite: bool = False) -> Path:
    """Check one output file (``flowood embed`` writes files, not a folder) before any work starts.

    The file must not be an input, must not lie inside an input folder, and, if it exists, must be a file
    flowood wrote (``is_flowood_file(path)`` says so) and ``overwrite`` must be given. Its folder is created
    and test-written.

    Raises:
        OutputError: as :func:`open_output_folder`.
    """
    given = Path(path).expanduser()
    real = given.resolve()
    reason = _file_clash(real, inputs)
    if reason is not None:
        raise OutputError(f"refusing to write {given}: {reason}. Choose another `out`")
    if real.is_dir():
        raise OutputError(f"cannot write {given}: it is a folder; name a file")
    if real.exists():
        if not is_flowood_file(real):
            raise OutputError(f"refusing to replace {given}: flowood did not write it, and flowood never deletes "
                              "such files. Choose another `out`")
        if not overwrite:
            raise OutputExistsError(f"{given} exists (an earlier flowood output); pass `overwrite=True` to replace "
                                    "it, or choose another `out`")
    for parent in real.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"cannot write {given}: {parent} is a file, not a folder")
            break
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        probe = real.with_name(f".{real.name}{_TMP_TAG}{os.getpid()}.probe")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OutputError(f"cannot write {given}: {err.strerror or err}; choose an `out` you can write to") from err
    return real
