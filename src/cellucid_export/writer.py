"""Staging folder, payload files, manifests, and the atomic publish.

An export is written into a hidden staging folder beside the target and renamed into place only
when complete. Any exception, Ctrl-C or SIGTERM removes the staging folder and leaves the target
exactly as it was. ``overwrite=True`` replaces only an empty folder or a previous export: replacing
removes the whole folder, so a folder holding anything else (a notebook, the input ``.h5ad``) is refused.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import queue
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ._logging import warn
from .codec import Codec
from .errors import (
    CellucidExportError,
    DiskFullError,
    ExportExistsError,
    InvalidParameterError,
    OverwriteRefusedError,
    TargetNotWritableError,
    TargetParentNotFolderError,
)
from .quantize import PAYLOAD_KINDS, QuantizedBlock

__all__ = ["Prefetch", "StagingFolder", "payload_suffix", "write_json", "write_payloads"]


def payload_suffix(kind_ext: str, compression: int | None) -> str:
    """``.u8`` / ``.u8.gz`` etc. The viewer decides whether to gunzip from the suffix alone."""
    return f".{kind_ext}" + (".gz" if compression else "")


def values_schema(folder: str, key: str, bits: int | None, compression, *, with_kind: bool) -> dict:
    """The manifest schema of continuous values (genes in ``var/``, continuous obs in ``obs/``).

    ``key`` is the placeholder the viewer fills in: ``"{key}"`` (name layout) or ``"{index}"``.
    """
    ext, dtype = PAYLOAD_KINDS[bits]
    schema = {"kind": "continuous"} if with_kind else {}
    schema |= {
        "pathPattern": f"{folder}/{key}.values{payload_suffix(ext, compression)}",
        "ext": ext,
        "dtype": dtype,
        "quantized": bits is not None,
    }
    if bits is not None:
        schema["quantizationBits"] = bits
    return schema


def write_json(path: Path, obj, *, indent: int | None = None) -> int:
    """Strict JSON (no NaN/Infinity literals); returns bytes written."""
    text = json.dumps(obj, allow_nan=False, indent=indent, ensure_ascii=False)
    data = text.encode("utf-8")
    path.write_bytes(data)
    return len(data)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """Turn SIGTERM into KeyboardInterrupt while exporting, so cleanup runs (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"export stopped by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _HeldSignals:
    """Ctrl-C and SIGTERM held back while a few steps run that must not stop half-way (main thread only).

    Signals that arrive meanwhile are handed, once the steps are done, to the handlers that were in
    place before: Ctrl-C raises KeyboardInterrupt as usual, and an ignored signal stays ignored.
    """

    def __init__(self):
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _HeldSignals:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, lambda signum, frame: self.received.append(signum))
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def deliver(self) -> None:
        """Run the earlier handler of the first signal held back (after ``__exit__``)."""
        if not self.received:
            return
        s = self.received[0]
        handler = self._previous.get(s)
        if callable(handler):
            handler(s, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(s)


class InterruptedAfterPublish(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) arrived while a finished export was being published: it is complete and in place."""


class StagingFolder:
    """Write an export beside ``target`` and publish it atomically.

    Use as a context manager; call :meth:`publish` at the end of the ``with`` block. Leaving the block
    without publishing (an exception, Ctrl-C) deletes the staging folder, and the folders above the
    target that it created.
    """

    def __init__(self, target: os.PathLike, *, overwrite: bool, full_disk_advice: str = "Free some space."):
        self.target = Path(target).absolute()
        self.overwrite = overwrite
        #: What to do when the disk fills up (the export knows its own levers).
        self.full_disk_advice = full_disk_advice
        check_target(self.target, overwrite)
        self.path = self.target.parent / f".{self.target.name}.staging-{uuid.uuid4().hex[:8]}"
        self._signals = _terminate_as_interrupt()
        self._created: list[Path] = []
        self._published = False

    def __enter__(self) -> StagingFolder:
        self._signals.__enter__()
        try:
            # The folders mkdir is about to create, deepest first, for removal if the export fails.
            existing = nearest_existing(self.target.parent)
            above = (self.target.parent, *self.target.parent.parents)
            self._created = list(itertools.takewhile(lambda p: p != existing, above))
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.path.mkdir()
        except BaseException as e:
            # __exit__ does not run when __enter__ fails: undo here, then explain with the user's path
            # (the error names the hidden staging folder, which the user never asked for).
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_created()
            self._signals.__exit__(type(e), e, e.__traceback__)
            if isinstance(e, OSError):
                check_parent(self.target, denied=isinstance(e, PermissionError))
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            shutil.rmtree(self.path, ignore_errors=True)
            if not self._published:
                self._remove_created()
        finally:
            self._signals.__exit__(exc_type, exc, tb)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            full = "is full" if exc.errno == errno.ENOSPC else "is beyond your disk quota"
            raise DiskFullError(
                f"The disk holding {self.target.parent} {full} (out of space, or of the files it may hold); nothing was "
                f"written to {self.target}. {self.full_disk_advice}"
            ) from exc
        return False

    def _restore(self, old: Path, cause: BaseException) -> None:
        """Put the previous export back after publishing failed; say where it is if even that fails."""
        try:
            os.replace(old, self.target)
        except OSError as e:
            raise CellucidExportError(
                f"Publishing the new export failed ({cause}), and so did putting the previous export back "
                f"({e.strerror}): it is intact in {old}. Rename that folder to {self.target.name} to restore it."
            ) from cause

    def _remove_created(self) -> None:
        """Remove the (empty) folders above the target that :meth:`__enter__` made, deepest first."""
        for folder in self._created:
            try:
                folder.rmdir()
            except OSError:  # something else was put there meanwhile: keep it and everything above
                break
        self._created = []

    def publish(self) -> None:
        """Move the finished export to the target, replacing an old one only if overwrite=True."""
        # Checked again: the folder may have changed while the export ran (a notebook saved into it).
        check_target(self.target, self.overwrite)
        # From moving the old export aside to removing it, an interrupt would leave the target missing or
        # a half-removed old folder beside it: signals wait until these steps are done.
        with _HeldSignals() as held:
            old = None
            if os.path.lexists(self.target):
                old = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.target, old)
            try:
                os.replace(self.path, self.target)
            except BaseException as e:
                if old is not None:
                    self._restore(old, e)
                raise
            self._published = True
            if old is not None:
                # The old export is already out of the way; a file it held never mixes with the new one. It is
                # a folder: check_target refuses a file or a link at the target.
                shutil.rmtree(old, ignore_errors=True)
                if os.path.lexists(old):
                    warn(
                        f"{self.target} holds the new export, but the previous one could not be removed "
                        f"completely: delete {old} yourself."
                    )
        try:
            held.deliver()
        except KeyboardInterrupt as e:
            raise InterruptedAfterPublish(
                f"stopped by signal {held.received[0]} after the export was complete: {self.target} holds it"
            ) from e


#: Files at the top of an export folder (``dataset.py`` and ``export.py`` write these, and so do the
#: reference writers ``cellucid==0.0.9`` and ``0.9.1``).
EXPORT_FILES = frozenset(
    {"var_manifest.json", "obs_manifest.json", "dataset_identity.json", "connectivity_manifest.json"}
    | {f"points_{d}d.bin{gz}" for d in (1, 2, 3) for gz in ("", ".gz")}
)
#: Folders at the top of an export folder; they hold only binary payloads.
EXPORT_FOLDERS = frozenset({"var", "obs", "connectivity", "vectors"})
#: Every export has at least one of these; payload folders alone are not recognised as an export.
_MANIFESTS = frozenset({"var_manifest.json", "obs_manifest.json", "dataset_identity.json"})
#: Files the operating system adds to any folder a person browses (Finder, Explorer); never the user's data.
_OS_FILES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_PAYLOAD_NAME = re.compile(r"\.(?:u8|u16|f32|bin)(?:\.gz)?$")


def foreign_entries(folder: Path) -> list[str]:
    """Entries of ``folder`` that no cellucid export writes; empty for an export or an empty folder.

    Parameters
    ----------
    folder
        An existing folder.

    Returns
    -------
    Paths relative to ``folder`` (folders end in ``/``), those at the top first.

    """
    top, nested = [], []
    with os.scandir(folder) as it:
        entries = [e for e in it if e.name not in _OS_FILES]
    for e in entries:
        if e.name in EXPORT_FILES and e.is_file(follow_symlinks=False):
            continue
        if e.name in EXPORT_FOLDERS and e.is_dir(follow_symlinks=False):
            for dirpath, _, filenames in os.walk(e.path):
                rel = Path(dirpath).relative_to(folder).as_posix()
                nested += [
                    f"{rel}/{n}" for n in filenames if n not in _OS_FILES and not _PAYLOAD_NAME.search(n)
                ]
            continue
        top.append(e.name + ("/" if e.is_dir() else ""))
    if not top and not nested and entries and not any(e.name in _MANIFESTS for e in entries):
        top = [e.name + "/" * e.is_dir() for e in entries]
    return sorted(top) + sorted(nested)


def _show_names(names: list[str], n: int = 4) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


def _holds_cwd(target: Path) -> bool:
    """Whether ``target`` is the working directory or a folder above it."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was deleted
        return False
    real = target.resolve()
    return real == cwd or real in cwd.parents


def nearest_existing(path: Path) -> Path:
    """``path`` or the closest folder above it that exists (a link counts, even a broken one)."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def check_parent(target: Path, *, denied: bool = False) -> None:
    """Refuse a target whose folder cannot be created: a file above it, or no permission to write.

    Parameters
    ----------
    target
        The absolute path of the export folder.
    denied
        Writing there was already refused (``os.access`` can say yes where the disk still says no, e.g.
        a network disk that maps root to nobody).

    Raises
    ------
    TargetParentNotFolderError
        A path above the target is a file (or a broken link), so no folder can be made there.
    TargetNotWritableError
        The nearest existing folder above the target is not writable.

    """
    where = nearest_existing(target.parent)
    if not os.path.isdir(where):
        raise TargetParentNotFolderError(
            f"Cannot create the export folder {target}: {where} is a file, not a folder. "
            "Choose an output folder that is not inside a file, e.g. exports/<dataset name>."
        )
    if _read_only_disk(where):
        raise TargetNotWritableError(
            f"Cannot create the export folder {target}: {where} is on a read-only disk (mounted read-only). "
            "Choose a folder on a disk you can write to, e.g. exports/<dataset name> inside your project folder."
        )
    if denied or not os.access(where, os.W_OK | os.X_OK):
        raise TargetNotWritableError(
            f"Cannot create the export folder {target}: you do not have permission to write in {where}. "
            "Choose a folder you can write to, e.g. exports/<dataset name> inside your project folder, "
            "or ask the owner of that folder for write access."
        )


def _read_only_disk(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target the export cannot create, or must not replace; writes nothing.

    An existing target is replaced only with ``overwrite=True``, and only when it is empty or holds
    nothing but what an export writes: replacing removes the whole folder, so anything else in it
    (a notebook, the input ``.h5ad``) would be lost. Nor is the working directory (or a folder above
    it) replaced, which would pull the folder out from under the user.

    Parameters
    ----------
    target
        The absolute path of the export folder.
    overwrite
        Whether an existing export may be replaced.

    Raises
    ------
    ExportExistsError
        The target exists and ``overwrite=False``, or is a file.
    OverwriteRefusedError
        ``overwrite=True`` but the target is not an empty folder or a previous export, or holds the
        working directory.
    TargetParentNotFolderError, TargetNotWritableError
        See :func:`check_parent`.

    """
    # os.path (not Path) checks: they answer False where the path cannot even be looked at, and
    # check_parent then explains that.
    if os.path.islink(target):
        # Replacing a link would put a folder where the link was and leave what it points to as it was.
        raise (OverwriteRefusedError if overwrite else ExportExistsError)(
            f"{target} is a link (to {os.readlink(target)}), not a folder. Export into the folder it points to, "
            "or remove the link."
        )
    # Normalised first: in exports/pbmc/../pbmc2, exports/pbmc is not a folder above the target.
    above = Path(os.path.abspath(target)).parents
    inside = next((p for p in above if any(os.path.isfile(p / m) for m in _MANIFESTS)), None)
    if inside is not None:
        raise InvalidParameterError(
            f"{target} is inside the export {inside}: its files would be taken for part of that export, which "
            f"could then no longer be checked or replaced. Choose a folder outside it, e.g. "
            f"{inside.parent / target.name}."
        )
    if os.path.exists(target) and not os.path.isdir(target):
        raise ExportExistsError(
            f"{target} exists and is a file, not an export folder. Remove it or choose another path."
        )
    if os.path.isdir(target):
        try:
            foreign = foreign_entries(target)
        except OSError as e:
            if overwrite:
                raise OverwriteRefusedError(
                    f"{target} cannot be read ({e.strerror}) to check that it is a previous cellucid export, "
                    "so overwrite=True will not replace it. Export into a new or empty folder instead, "
                    "e.g. exports/<dataset name>."
                ) from e
            foreign = []
        if foreign and not overwrite:
            raise ExportExistsError(
                f"{target} already exists and does not look like a cellucid export: it holds "
                f"{_show_names(foreign)}, which an export never writes. Export into a new or empty folder "
                "instead, e.g. exports/<dataset name> (overwrite=True would not replace this folder either)."
            )
        if not overwrite:
            raise ExportExistsError(
                f"{target} already exists. Pass overwrite=True to replace it "
                "(the old folder is removed whole), "
                "or choose another folder."
            )
        if foreign:
            raise OverwriteRefusedError(
                f"{target} does not look like a cellucid export, so overwrite=True will not replace it: it "
                f"holds {_show_names(foreign)}, which an export never writes, and replacing removes "
                "everything in the folder. Export into a new or empty folder instead, e.g. "
                "exports/<dataset name>, or delete the folder yourself if nothing in it is needed."
            )
        if _holds_cwd(target):
            raise OverwriteRefusedError(
                f"{target} is the folder you are working in (or holds it), so overwrite=True will not "
                "replace it: replacing removes the folder from under you. Export into a new folder instead, "
                "e.g. exports/<dataset name>."
            )
    check_parent(target)


class Prefetch:
    """Items produced in a background thread, one ahead, so reading overlaps writing; an iterator.

    The producer starts at once. It makes item ``k + 1`` while the consumer works on item ``k``, and
    starts ``k + 2`` only once the consumer has taken ``k + 1``: at most two items are alive, which is
    what the memory budget counts on. Exceptions in the producer are raised in the consumer.
    :meth:`close` (or leaving a ``with`` block) sets ``stop`` and waits for the producer, which sees
    ``stop`` between items, and within an item where the items check it.
    """

    def __init__(self, items: Iterable, stop: threading.Event | None = None):
        self.stop = stop if stop is not None else threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._taken = threading.Semaphore(0)
        self._finished = False
        self._thread = threading.Thread(
            target=self._produce, args=(items,), name="cellucid-export-reader", daemon=True
        )
        self._thread.start()

    def _produce(self, items: Iterable) -> None:
        try:
            for item in items:
                self._queue.put(("item", item))
                del item
                while not self._taken.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
            self._queue.put(("done", None))
        except BaseException as e:  # handed to the consumer
            self._queue.put(("error", e))

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        self._taken.release()
        if kind == "item":
            return value
        self._finished = True
        self.close()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the producer and wait for it; nothing it made stays referenced."""
        self._finished = True
        self.stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting to put
                while True:
                    self._queue.get_nowait()
            self._thread.join(timeout=0.05)
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_payloads(
    folder: Path,
    names: list[str],
    block: QuantizedBlock,
    codec: Codec | None,
    pool: ThreadPoolExecutor,
) -> int:
    """Write row ``j`` of ``block.payload`` to ``folder / names[j]`` for every gene of the block.

    Genes are encoded in parallel; each file depends only on its own gene, so the bytes are the same
    whatever the number of threads. Returns the bytes written.
    """
    payload = block.payload
    # Files are little-endian: a no-op here, a byte swap on a big-endian machine (whose native order is "=").
    payload = payload.astype(payload.dtype.newbyteorder("<"), copy=False)
    paths = [os.path.join(folder, name) for name in names]
    # Genes go to the pool in groups of about 1 MB of payload: a task per gene costs more in thread
    # hand-offs (and waits for the GIL) than a small gene takes to compress.
    row_bytes = max(1, payload[0].nbytes if len(payload) else 1)
    per_task = max(1, min(64, 2**20 // row_bytes))

    def write_some(j0: int) -> int:
        written = 0
        for j in range(j0, min(j0 + per_task, len(paths))):
            data = memoryview(np.ascontiguousarray(payload[j])).cast("B")
            out = codec.encode(data) if codec is not None else data
            _write_file(paths[j], out)
            written += len(out) if codec is not None else data.nbytes
        return written

    return sum(pool.map(write_some, range(0, len(paths), per_task)))


def _write_file(path: str, data) -> None:
    """Create ``path`` holding ``data``: raw system calls, which release the GIL, and no Python buffering."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def run_pool(n_jobs: int) -> ThreadPoolExecutor:
    """The encoder thread pool."""
    return ThreadPoolExecutor(max_workers=max(1, n_jobs), thread_name_prefix="cellucid-export-gzip")
