"""HDF5 result files: the schema every analysis writes, resumable and atomic.

Layout of one result (DESIGN.md, "HDF5 schema"):

* root attributes: ``analysis``, ``format`` = "landscape-result/1", ``created``,
  ``landscape_version``, ``torch_version``, ``command``, ``checkpoints``,
  ``checkpoint_sha256``, ``dataset``, ``subset``, ``bn_mode``, ``seed``, ``normalization``
  (where given), plus any analysis options the caller adds;
* coordinates as root datasets (``alpha``; ``x``, ``y``; ``epoch``; ``interval``);
* metrics ``<split>/<metric>`` float64 shaped like the grid, NaN until computed,
  attribute ``dims``; ``done`` (bool, same shape) marks computed points;
* anything else via :meth:`ResultWriter.put` (``distance``, ``pca/coords``, ...).

Encoding, so that h5py round-trips every attribute: dicts (and lists that are not all
strings or all numbers) are stored as JSON strings and their names listed in the
``json_attrs`` attribute of the same object; lists of strings become string arrays;
``None`` values are left out. ``subset`` is -1 when the whole split is used.
Bookkeeping root attributes: ``dims``, ``coords``, ``splits``, ``metrics`` (name lists),
so a reader can tell coordinates and metrics from extra datasets.

A run writes ``<path>.partial`` and renames it to ``<path>`` in :meth:`finish`, so a
finished file is never half-written and a killed run leaves only the ``.partial``,
which the same command resumes from its ``done`` mask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from landscape import files
from landscape.errors import UserError

log = logging.getLogger("landscape")
FORMAT = "landscape-result/1"

# Root attributes that describe *how* a file came about, not *what* it contains: a resume
# from another directory, with another version or a re-spelled command line still fits.
NON_IDENTITY = frozenset({"format", "created", "command", "checkpoints",
                          "landscape_version", "torch_version", "json_attrs"})
# Root attributes the store itself manages; callers may not pass them in ``attrs``.
BOOKKEEPING = ("dims", "coords", "splits", "metrics", "json_attrs")

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- attributes

def _encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Python values -> values h5py stores and gives back unchanged (see module doc)."""
    out: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, (str, os.PathLike)):
            value = str(os.fspath(value))  # str subclasses (torch.__version__) confuse h5py
        if isinstance(value, (list, tuple)) and all(isinstance(v, (str, os.PathLike)) for v in value):
            value = np.array([os.fspath(v) for v in value], dtype=h5py.string_dtype())
        elif isinstance(value, (list, tuple)) and all(_is_number(v) for v in value):
            value = np.asarray(value)
        elif isinstance(value, (list, tuple, dict)):
            value = json.dumps(value, sort_keys=True, default=_json_default)
            json_keys.append(key)
        out[key] = value
    if json_keys:
        out["json_attrs"] = np.array(json_keys, dtype=h5py.string_dtype())
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and paths inside dicts (a dataset spec may hold them)."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} cannot be stored in a result attribute")


def _decode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [v.decode() if isinstance(v, bytes) else str(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """h5py attributes -> plain Python (JSON strings parsed back, arrays to lists)."""
    out = {key: _decode_value(value) for key, value in attrs.items()}
    for key in out.pop("json_attrs", []):
        if key in out:
            out[key] = json.loads(out[key])
    return out


def _normalize_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What ``attrs`` will read back as, so new and stored values compare like for like."""
    return _decode_attrs(_encode_attrs(attrs))


def _write_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for key, value in _encode_attrs(attrs).items():
        obj.attrs[key] = value


# ----------------------------------------------------------------------------- arrays

def _as_array(value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind in "OU":  # h5py cannot store numpy unicode; use its UTF-8 strings
        arr = np.array(arr.tolist(), dtype=h5py.string_dtype())
    return arr


def _read_dataset(ds: h5py.Dataset) -> Any:
    if h5py.check_string_dtype(ds.dtype) is not None:
        return ds.asstr()[()]
    return ds[()]


def _same(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    a_str, b_str = a.dtype.kind in "OSU", b.dtype.kind in "OSU"
    if a_str or b_str:
        return a_str and b_str and _decode_value(a.ravel()) == _decode_value(b.ravel())
    if a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- files

class _Unreadable(UserError):
    """A file HDF5 cannot open at all (truncated, damaged, not HDF5)."""


def _open(path: Path, mode: str, hint: str = "") -> h5py.File:
    """Open an existing result file; anything unreadable is a one-line UserError.
    ``hint`` (what the user can do about it) ends the message. Files that would make HDF5
    read other files (see :func:`refuse_foreign`) are refused before any data is read."""
    hint = f"; {hint}" if hint else ""
    if path.is_dir():
        raise UserError(f"{path} is a directory, not a result file{hint}")
    try:
        h5 = h5py.File(path, mode)
    except OSError as exc:
        reason = " ".join(str(exc).split())
        # HDF5 locks a file open for writing; its message says "unable to lock file". (Not
        # just "lock": a truncated file's message contains "sblock", the superblock.)
        if "unable to lock file" in reason or exc.errno in (11, 35):
            raise UserError(f"{path} is open in another process (is the same analysis running?)") from None
        if mode != "r" and exc.errno is not None and exc.errno in files._REASONS:
            raise files.write_error(path, exc) from None
        raise _Unreadable(f"{path} is not a readable HDF5 file ({reason}){hint}") from None
    try:
        refuse_foreign(h5, path)
        try:
            fmt = _decode_value(h5.attrs.get("format"))
        except Exception:  # a damaged attribute heap: as unreadable as a damaged header
            fmt = None
        if fmt != FORMAT:
            what = "has no 'format' attribute" if fmt is None else f"has format {_short(fmt)}, not {FORMAT!r}"
            raise UserError(f"{path} is not a landscape result (it {what}){hint}")
    except BaseException:
        h5.close()
        raise
    return h5


# Filters built into every HDF5 library. Any other filter id makes HDF5 load a plugin
# (a shared library) from its plugin path to read the data: code a file should not pick.
BUILTIN_FILTERS = frozenset({h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_FLETCHER32,
                             h5py.h5z.FILTER_SZIP, h5py.h5z.FILTER_NBIT, h5py.h5z.FILTER_SCALEOFFSET})


def refuse_foreign(h5: h5py.File, path: Path) -> None:
    """UserError if reading ``h5`` could read anything but ``h5`` itself, or load code.

    landscape writes plain groups and datasets linked by hard links, nothing else. Refused:
    soft, external and user-defined links; datasets with external storage (raw data in
    other files), virtual datasets (data mapped from other datasets, possibly in other
    files); and filters that are not built into HDF5 (they load plugins). Checked from the
    link table and the creation properties only: no dataset is read.
    """
    found: list[str] = []

    def visit(name: bytes) -> None:
        text = name.decode(errors="replace")
        kind = h5.id.links.get_info(name).type
        if kind != h5py.h5l.TYPE_HARD:
            try:
                link = h5.get(text, getlink=True)
            except Exception:  # a user-defined link type h5py does not know
                link = None
            if isinstance(link, h5py.ExternalLink):
                found.append(f"{text!r} is an external link to {link.filename}:{link.path}")
            elif isinstance(link, h5py.SoftLink):
                found.append(f"{text!r} is a soft link to {link.path}")
            else:
                found.append(f"{text!r} is a user-defined link")
            return
        obj = h5[text]
        if isinstance(obj, h5py.Dataset):
            dcpl = obj.id.get_create_plist()
            if obj.is_virtual or dcpl.get_layout() == h5py.h5d.VIRTUAL:
                found.append(f"dataset {text!r} is virtual (its data come from other datasets or files)")
            elif dcpl.get_external_count():
                source = dcpl.get_external(0)[0].decode(errors="replace")
                found.append(f"dataset {text!r} keeps its data in an external file ({source})")
            else:
                for i in range(dcpl.get_nfilters()):
                    code = dcpl.get_filter(i)[0]
                    if code not in BUILTIN_FILTERS:
                        found.append(f"dataset {text!r} needs HDF5 filter plugin {code}")
                        break
        return None if not found else 1  # stop at the first finding

    try:
        h5.id.links.visit(visit)
    except UserError:
        raise
    except Exception as exc:  # a damaged link table: unreadable, not a traceback
        raise UserError(f"{path} is damaged ({' '.join(str(exc).split()) or type(exc).__name__})") from None
    if found:
        raise UserError(f"{path} refused: {found[0]}; landscape result files never use links, external "
                        "storage, virtual datasets or filter plugins, and reading one would read other files")


@dataclass
class _Identity:
    """Everything that must match for a file to be continued (or reported as done)."""

    analysis: str
    attrs: dict[str, Any]  # normalized, identity keys only
    coords: dict[str, np.ndarray]
    dims: list[str]
    splits: list[str]
    metrics: list[str]

    @classmethod
    def read(cls, h5: h5py.File, path: Path, hint: str) -> "_Identity":
        try:
            attrs = _decode_attrs(h5.attrs)
            ident = cls(
                analysis=attrs.pop("analysis"),
                attrs={k: v for k, v in attrs.items() if k not in NON_IDENTITY and k not in BOOKKEEPING},
                coords={name: h5[name][()] for name in attrs["coords"]},
                dims=list(attrs["dims"]), splits=list(attrs["splits"]), metrics=list(attrs["metrics"]),
            )
            shape = h5["done"].shape
            for split in ident.splits:
                for metric in ident.metrics:
                    if h5[f"{split}/{metric}"].shape != shape:
                        raise ValueError(f"{split}/{metric} has the wrong shape")
        except Exception as exc:  # missing keys, damaged data: never a traceback
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"{path} is damaged or incomplete ({reason}); {hint}") from None
        return ident

    def differences(self, new: "_Identity") -> list[str]:
        diffs = []
        for key in sorted(set(self.attrs) | set(new.attrs)):
            old_v, new_v = self.attrs.get(key), new.attrs.get(key)
            if old_v != new_v:
                diffs.append(f"{key} {_short(old_v)} in the file, {_short(new_v)} now")
        for name in ("dims", "splits", "metrics"):
            if getattr(self, name) != getattr(new, name):
                diffs.append(f"{name} {getattr(self, name)} in the file, {getattr(new, name)} now")
        if set(self.coords) != set(new.coords):
            diffs.append(f"coordinates {sorted(self.coords)} in the file, {sorted(new.coords)} now")
        else:
            diffs += [f"coordinate {name!r} differs" for name in self.coords
                      if not _same(self.coords[name], new.coords[name])]
        return diffs


def _mismatch(path: Path, old: _Identity, new: _Identity, hint: str) -> UserError | None:
    if old.analysis != new.analysis:
        return UserError(f"{path} was made by analysis {old.analysis!r}, not {new.analysis!r}; {hint}")
    diffs = old.differences(new)
    if diffs:
        return UserError(f"{path} was made with other settings ({'; '.join(diffs)}); {hint}")
    return None


def hdf5_write_error(path: Path, exc: BaseException) -> UserError:
    """One line for a failed HDF5 write. h5py raises RuntimeError or OSError with HDF5's own
    text, which names the C errno ("errno = 28" for a full disk)."""
    if isinstance(exc, OSError) and exc.errno:
        return files.write_error(path, exc)
    found = re.search(r"errno = (\d+)", str(exc))
    if found:
        code = int(found.group(1))
        return files.write_error(path, OSError(code, os.strerror(code), str(path)))
    return UserError(f"cannot write {path} ({' '.join(str(exc).split())[:200]})")


def _holds_results(h5: h5py.File, ident: _Identity) -> bool:
    """Whether a file holds anything computed: a done point, or a dataset beyond the schema's."""
    if ident.splits and ident.metrics and bool(np.any(h5["done"][...])):
        return True
    schema = set(ident.coords) | {f"{s}/{m}" for s in ident.splits for m in ident.metrics} | {"done"}
    extra: list[str] = []
    h5.visititems(lambda name, obj: extra.append(name) if isinstance(obj, h5py.Dataset) and name not in schema
                  else None)
    return bool(extra)


MAX_POINTS = 1_000_000_000  # days of compute at a millisecond a point, whatever the machine


def check_size(path: Path, shape: tuple[int, ...], arrays: int) -> None:
    """UserError when a grid of ``shape`` cannot be held: checked before anything is allocated.

    The writer keeps the ``done`` mask (1 byte a point) and updates one float64 array at a
    time with the list of pending points (8 + 8 bytes a point); the file holds ``arrays``
    float64 arrays. A grid beyond the memory or the free disk space would fail only after
    hours of compute, or crash with a MemoryError.
    """
    points = int(np.prod(shape, dtype=object))  # Python ints: no overflow
    if points <= 1_000_000:
        return
    grid = " x ".join(map(str, shape))
    if points > MAX_POINTS:
        raise UserError(f"a grid of {points:,} points ({grid}) is more than the {MAX_POINTS:,} any analysis "
                        "computes in reasonable time; use fewer points")
    memory, available = 24 * points, _available_memory()
    if available is not None and memory > available:
        raise UserError(f"a grid of {points:,} points ({grid}) needs about {_gb(memory)} of memory, more than "
                        f"the {_gb(available)} available; use fewer points")
    disk = 8 * points * max(arrays, 1)
    try:
        free = shutil.disk_usage(path.parent if str(path.parent) else ".").free
    except OSError:
        return  # the folder does not exist yet: the write check names the problem
    if disk > free:
        raise UserError(f"a grid of {points:,} points ({grid}) needs about {_gb(disk)} on disk for {path}, more than "
                        f"the {_gb(free)} free there; use fewer points")


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


# ----------------------------------------------------------------------------- writer

class ResultWriter:
    """Writes one result file point by point; resumable; atomic on :meth:`finish`.

    Use :meth:`create_or_resume`, then ``for idx in chunks of writer.pending(): write``,
    then :meth:`finish`. When ``writer.complete`` is already True the result exists and
    there is nothing to do (``pending()`` is empty, ``finish()`` just returns the path).
    """

    # What the result files this process began hold so far: {partial: (points done, points)}
    # (see :func:`unfinished`; plain numbers, so that a dropped writer is still collected).
    progress: dict[Path, tuple[int, int]] = {}

    def __init__(self, path: Path, identity: _Identity, h5: h5py.File | None,
                 lock: files.Lock | None = None) -> None:
        self.path = path
        self.partial = Path(f"{path}.partial")
        self.analysis = identity.analysis
        self.dims, self.splits, self.metrics = identity.dims, identity.splits, identity.metrics
        self.coords = identity.coords
        self.shape: tuple[int, ...] = tuple(len(identity.coords[d]) for d in identity.dims)
        self._h5 = h5
        self._lock = lock
        self.complete = h5 is None
        # The done mask lives in memory too, so pending() never touches the disk.
        self._done = np.ones(self.shape, bool) if h5 is None else np.array(h5["done"][...], bool)
        if h5 is not None:
            ResultWriter.progress[self.partial] = (int(self._done.sum()), self.size)

    @classmethod
    def create_or_resume(cls, path: PathLike, *, analysis: str, attrs: Mapping[str, Any],
                         coords: Mapping[str, Any], dims: Sequence[str], splits: Sequence[str],
                         metrics: Sequence[str] = ("loss", "accuracy"),
                         overwrite: bool = False) -> "ResultWriter":
        """Open the result at ``path`` for writing, continuing a killed run if there is one.

        * ``path`` exists with the same identity: ``complete`` is True, nothing to write.
        * ``path`` exists otherwise (other settings, or unreadable): UserError, unless
          ``overwrite``; then it is recomputed and replaced on ``finish()``.
        * ``path.partial`` exists with the same identity: computation continues from its
          ``done`` mask. Otherwise UserError, unless ``overwrite`` (then it is discarded) or
          unless it holds nothing of value (no computed point, no extra dataset, or it is
          damaged beyond reading): then it is discarded with a note, so that a command the
          user just corrected starts over.

        A lock file beside ``path`` (``.NAME.lock``) makes a second writer of the same result
        a one-line error; it is released by :meth:`finish`, :meth:`close` or the process's
        end. Everything that can be checked before computing is: the size of the grid
        against memory and disk, ``path`` being a directory, and that its folder is writable.

        The identity is ``analysis``, coordinates, dims, splits, metrics and every
        attribute in ``attrs`` except ``created``, ``command``, ``checkpoints`` (paths;
        the files are identified by ``checkpoint_sha256``) and the versions.
        """
        path = Path(path)
        new = cls._identity(analysis, attrs, coords, dims, splits, metrics)
        check_size(path, tuple(len(new.coords[d]) for d in new.dims), len(new.splits) * len(new.metrics))
        if path.is_dir():
            raise UserError(f"-o {path}: is a directory; choose a file name (e.g. {path / 'result.h5'})")
        if path.exists() and not overwrite:
            hint = "remove it, choose another -o or overwrite it"
            with _open(path, "r", hint) as h5:
                old = _Identity.read(h5, path, hint)
            if err := _mismatch(path, old, new, hint):
                raise err
            return cls(path, old, None)

        files.check_writable(path, directory_ok=False)  # before any work: read-only, no permission
        lock = files.Lock(path.with_name(f".{path.name}.lock"), f"result file {path}").acquire()
        try:
            partial = Path(f"{path}.partial")
            if partial.exists() and (h5 := cls._resume(partial, new, overwrite)) is not None:
                return cls(path, new, h5, lock)
            return cls(path, new, cls._create(partial, new, attrs), lock)
        except BaseException:
            lock.release()
            raise

    @staticmethod
    def _resume(partial: Path, new: _Identity, overwrite: bool) -> h5py.File | None:
        """The open ``.partial`` when it continues ``new``; else None after discarding it, when
        ``overwrite`` or when it holds nothing of value; else the UserError that says why not."""
        hint = "remove it or choose another -o"
        try:
            h5 = _open(partial, "r+", hint)
        except _Unreadable as exc:  # damaged beyond opening: nothing in it can be resumed
            if not overwrite:
                log.info("%s; starting over", exc)
        except UserError:
            if not overwrite:
                raise  # another process's, not a landscape file, or refused: not ours to delete
        else:
            try:
                old = _Identity.read(h5, partial, hint)
            except UserError as exc:
                h5.close()
                if not overwrite:
                    log.info("%s; starting over", str(exc).split(";")[0])
            else:
                err = _mismatch(partial, old, new, hint)
                if err is None:
                    return h5
                worth_keeping = _holds_results(h5, old)
                h5.close()
                if worth_keeping and not overwrite:
                    raise err
                if not overwrite:
                    log.info("%s was made with other settings but holds no computed point; starting over", partial)
        with files.writing(partial):
            partial.unlink()
        return None

    @staticmethod
    def _identity(analysis: str, attrs: Mapping[str, Any], coords: Mapping[str, Any],
                  dims: Sequence[str], splits: Sequence[str], metrics: Sequence[str]) -> _Identity:
        """Validate the caller's description (programming errors are ValueError)."""
        attrs = dict(attrs)
        if attrs.get("analysis", analysis) != analysis:
            raise ValueError(f"attrs say analysis {attrs['analysis']!r} but analysis={analysis!r}")
        if clash := [k for k in BOOKKEEPING if k in attrs]:
            raise ValueError(f"attrs may not set {clash}: the store manages them")
        if attrs.get("subset", -1) is None:
            attrs["subset"] = -1  # one spelling of "whole split", so identities compare
        arrays = {name: np.asarray(value) for name, value in coords.items()}
        if missing := [d for d in dims if d not in arrays]:
            raise ValueError(f"dims {missing} have no coordinate")
        if bad := [n for n, a in arrays.items() if a.ndim != 1]:
            raise ValueError(f"coordinates {bad} are not 1-D")
        names = [*arrays, *splits, "done"]
        if len(set(names)) != len(names):
            raise ValueError(f"coordinate and split names must differ from each other and 'done': {names}")
        normalized = _normalize_attrs(attrs)
        normalized.pop("analysis", None)
        ident_attrs = {k: v for k, v in normalized.items() if k not in NON_IDENTITY}
        return _Identity(analysis, ident_attrs, arrays, list(dims), list(splits), list(metrics))

    @staticmethod
    def _create(partial: Path, ident: _Identity, attrs: Mapping[str, Any]) -> h5py.File:
        """A fresh ``.partial``, built under a temporary name first so that a kill during
        creation never leaves a file that looks like a result but lacks parts of one.

        The file is built in memory and written with one plain write: every array is there
        in full, so the disk space a result needs is taken before any compute (a full disk is
        an OSError here, not an HDF5 failure hours later), and the writes of points later
        overwrite bytes that are already there."""
        name = f"{partial.name}.{os.getpid()}.image"  # an in-memory file: the name only labels it
        with h5py.File(name, "w", driver="core", backing_store=False, track_order=True) as h5:
            full = {k: v for k, v in attrs.items() if k != "analysis"}
            if full.get("subset", -1) is None:
                full["subset"] = -1
            _write_attrs(h5, {**full, "analysis": ident.analysis, "format": FORMAT,
                              "dims": list(ident.dims), "coords": list(ident.coords),
                              "splits": list(ident.splits), "metrics": list(ident.metrics)})
            if "created" not in full:
                h5.attrs["created"] = _now()
            for coord, values in ident.coords.items():
                h5.create_dataset(coord, data=values)
            shape = tuple(len(ident.coords[d]) for d in ident.dims)
            dims_attr = np.array(ident.dims, dtype=h5py.string_dtype())
            for split in ident.splits:
                for metric in ident.metrics:
                    ds = h5.create_dataset(f"{split}/{metric}", data=np.full(shape, np.nan))
                    ds.attrs["dims"] = dims_attr
            # Without metrics there is nothing to compute per point.
            done = h5.create_dataset("done", data=np.full(shape, not ident.metrics or not ident.splits))
            done.attrs["dims"] = dims_attr
            h5.flush()
            image = h5.id.get_file_image()
        files.atomic_write_bytes(partial, image)  # one line on a full disk; the umask's permissions
        return _open(partial, "r+")

    # -- writing

    def pending(self) -> np.ndarray:
        """Flat indices (C order over ``shape``) of the points not computed yet."""
        return np.flatnonzero(~self._done.ravel())

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _file(self) -> h5py.File:
        if self._h5 is None:
            raise RuntimeError(f"{self.path} is already complete (or closed); nothing to write")
        return self._h5

    def write(self, flat_idx: Iterable[int] | np.ndarray,
              results: Mapping[str, Mapping[str, Any]]) -> None:
        """Store the metrics of points ``flat_idx`` exactly as given (NaN/inf included),
        mark them done and flush, so a kill right after loses nothing."""
        h5 = self._file()
        idx = np.asarray(flat_idx, dtype=np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= self.size):
            raise IndexError(f"flat indices outside 0..{self.size - 1}")
        # Check everything before touching the file, so a bad call writes nothing.
        values = {}
        for split in self.splits:
            for metric in self.metrics:
                v = np.asarray(results[split][metric], dtype=np.float64).ravel()
                if v.shape != idx.shape:
                    raise ValueError(f"{split}/{metric}: {v.size} values for {idx.size} points")
                values[f"{split}/{metric}"] = v
        if extra := {f"{s}/{m}" for s in results for m in results[s]} - set(values):
            raise ValueError(f"results for {sorted(extra)}, which this file does not hold")
        with self._writing():
            for name, v in values.items():
                ds = h5[name]
                data = np.array(ds[...])  # whole-array update: simple, and grids are small
                data.reshape(-1)[idx] = v
                ds[...] = data
            # `done` last: a kill between the two leaves the points pending, never half-done.
            done = self._done.copy()
            done.reshape(-1)[idx] = True
            h5["done"][...] = done
            h5.flush()
        self._done = done
        ResultWriter.progress[self.partial] = (int(done.sum()), self.size)

    def put(self, name: str, array: Any, attrs: Mapping[str, Any] | None = None) -> None:
        """Store an extra dataset (``"distance"``, ``"pca/coords"``: groups are created).
        On resume an equal dataset is left alone; a different one is replaced."""
        h5 = self._file()
        if name.strip("/").split("/")[0] in set(self.splits) | set(self.coords) | {"done"}:
            raise ValueError(f"{name!r} clashes with a coordinate, a split or 'done'")
        arr = _as_array(array)
        with self._writing():
            if name in h5:
                old = h5[name]
                if not (isinstance(old, h5py.Dataset) and _same(_read_dataset(old), arr)):
                    del h5[name]
            if name not in h5:
                h5.create_dataset(name, data=arr)
            if attrs:
                _write_attrs(h5[name], attrs)
            h5.flush()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (a full disk) is one line; the file is closed at once, so HDF5 does
        not try again at exit. What was flushed before stays in the ``.partial``: the same
        command continues from it once there is space again (or starts over if HDF5 could
        not keep it readable)."""
        try:
            yield
        except (OSError, RuntimeError) as exc:  # h5py reports a failed write as either
            try:
                self.close()
            except Exception:
                pass
            raise hdf5_write_error(self.partial, exc) from None

    def close(self) -> None:
        """Close the ``.partial`` without finishing (a clean interruption; resumable)."""
        try:
            if self._h5 is not None:
                h5, self._h5 = self._h5, None
                h5.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def finish(self) -> Path:
        """Close the file and move it to ``path`` in one rename. Every point must be done."""
        if self.complete:
            return self.path
        if n := len(self.pending()):
            raise RuntimeError(f"finish() with {n} of {self.size} points still pending")
        try:
            if self._h5 is not None:
                with self._writing():  # a failed final flush (full disk) is one line; the .partial stays
                    self._h5.close()
                self._h5 = None
            with files.writing(self.path):
                files.fsync(self.partial)  # the rename must not land before the data does
                os.replace(self.partial, self.path)
        finally:
            self.close()  # releases the lock
        self.complete = True
        ResultWriter.progress.pop(self.partial, None)
        return self.path

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()  # on an exception the .partial stays, ready to resume


def unfinished() -> list[tuple[Path, int, int]]:
    """The result files this process began and has not finished, oldest first, as
    ``(partial, points done, points)``: after an interruption, what their ``.partial`` keeps."""
    return [(p, done, total) for p, (done, total) in ResultWriter.progress.items() if p.exists()]


# ----------------------------------------------------------------------------- reading

@dataclass
class Result:
    """A result file read into memory (works on ``.partial`` files of killed runs too)."""

    attrs: dict[str, Any]
    coords: dict[str, np.ndarray]  # dims first, in order
    metrics: dict[str, dict[str, np.ndarray]]  # {split: {metric: array shaped like the grid}}
    done: np.ndarray
    extra: dict[str, Any]  # every other dataset by full name, e.g. "pca/coords"
    path: Path
    dims: list[str] = field(default_factory=list)
    extra_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def analysis(self) -> str:
        return self.attrs["analysis"]

    @property
    def complete(self) -> bool:
        return bool(self.done.all()) and not str(self.path).endswith(".partial")


def load_result(path: PathLike) -> Result:
    """Read a result (or a ``.partial``) file; unreadable files are a UserError."""
    path = Path(path)
    if not path.exists():
        partial = Path(f"{path}.partial")
        extra_hint = f" (an unfinished {partial} exists)" if partial.exists() else ""
        raise UserError(f"{path} does not exist{extra_hint}")
    with _open(path, "r") as h5:
        try:
            attrs = _decode_attrs(h5.attrs)
            dims, splits, metric_names = attrs["dims"], attrs["splits"], attrs["metrics"]
            coord_names = dims + [c for c in attrs["coords"] if c not in dims]
            coords = {name: h5[name][()] for name in coord_names}
            metrics = {s: {m: h5[f"{s}/{m}"][()] for m in metric_names} for s in splits}
            done = np.array(h5["done"][...], bool)
            known = set(coord_names) | {f"{s}/{m}" for s in splits for m in metric_names} | {"done"}
            extra, extra_attrs = {}, {}

            def collect(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset) and name not in known:
                    extra[name] = _read_dataset(obj)
                    if obj.attrs:
                        extra_attrs[name] = _decode_attrs(obj.attrs)

            h5.visititems(collect)
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(f"{path} is damaged or incomplete ({reason})") from None
    for key in BOOKKEEPING:
        attrs.pop(key, None)
    return Result(attrs, coords, metrics, done, extra, path, list(dims), extra_attrs)


# ----------------------------------------------------------------------------- attrs

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def root_attrs(analysis: str, command: str | Sequence[str], checkpoints: Sequence[PathLike] | PathLike,
               dataset_spec: Mapping[str, Any], subset: int | None, bn_mode: str, seed: int,
               normalization: str | Mapping[str, Any] | None = None,
               digests: Sequence[str] | None = None) -> dict[str, Any]:
    """The DESIGN.md root attributes of a result (add analysis options to the dict).

    ``command`` may be ``sys.argv`` (joined shell-quoted); ``subset`` None means the whole
    split and is stored as -1; ``normalization`` is left out when None. ``digests`` are the
    checkpoints' sha256 when they are not (all) files (weights handed over in Python).
    """
    import torch  # here, not at module level: load_result must stay light for notebooks

    import landscape
    from landscape.checkpoint import file_sha256

    if isinstance(checkpoints, (str, os.PathLike)):
        checkpoints = [checkpoints]
    paths = [os.fspath(p) for p in checkpoints]
    attrs: dict[str, Any] = {
        "analysis": analysis,
        "format": FORMAT,
        "created": _now(),
        "landscape_version": landscape.__version__,
        "torch_version": str(torch.__version__),
        "command": command if isinstance(command, str) else shlex.join(command),
        "checkpoints": paths,
        "checkpoint_sha256": list(digests) if digests is not None else [file_sha256(p) for p in paths],
        "dataset": dict(dataset_spec),
        "subset": -1 if subset is None else int(subset),
        "bn_mode": bn_mode,
        "seed": int(seed),
    }
    if normalization is not None:
        attrs["normalization"] = normalization
    return attrs
