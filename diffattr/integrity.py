"""Integrity where stores are read: damage is named in one sentence that says how to rebuild.

A finished zarr store or safetensors checkpoint can still be damaged later (a disk fills, a copy is
cut short, a chunk file is edited). Snakemake cannot see that — the output exists and is newer than
its inputs — so the reader must. Three cheap checks, none of which re-hashes a store:

- **garbled chunk**: stores written by diffattr compress with zstd *with its frame checksum*
  (xxhash64 of each chunk's decoded bytes, :data:`CHUNK_CODEC`), so a flipped byte fails to decode
  instead of decoding to wrong numbers; a truncated chunk fails to decode either way;
- **missing chunk**: zarr reads a missing chunk as its fill value (silent zeros). Stores written by
  diffattr write every chunk, empty or not, and say so in their attrs (:data:`SEAL`); on open, a
  sealed store's arrays must have every chunk file (:func:`missing_chunk` — one directory listing);
- **truncated checkpoint**: a safetensors file must be exactly 8 + header + the largest tensor end
  offset bytes long (:func:`check_safetensors` — reads the header only).

Every such error becomes a :class:`StoreError` whose message is one sentence naming the store, the
damaged array and chunk, and the rule that rebuilds it (:func:`producing_rule`, from the path layout
of :mod:`diffattr.workflow.layout`), e.g. "Store 'results/scores/trak/val.zarr' is truncated or corrupted
(array 'scores', chunk (0, 0)); delete it or rebuild it with `snakemake --forcerun score`."
Stores written before the seal (or by other tools) get the decode check only.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from diffattr.workflow import layout

SEAL = "diffattr_chunks_complete"
"""Group attribute of a store written by diffattr: every chunk of every array was written."""

CHUNK_CODEC = ZstdCodec(level=0, checksum=True)
"""zstd with its frame checksum: a garbled chunk fails to decode (costs 4 bytes per chunk)."""


class StoreError(ValueError):
    """A store or checkpoint is truncated or corrupted, stated in one sentence."""


def array_options() -> dict[str, Any]:
    """Keyword arguments of ``create_array`` for a checked array: checksummed zstd chunks, and every
    chunk written even when it holds only the fill value (so a missing chunk means damage)."""
    return {"compressors": CHUNK_CODEC, "config": {"write_empty_chunks": True}}


def seal(group: zarr.Group) -> None:
    """Record in ``group``'s attrs that every chunk of its arrays was written (see :data:`SEAL`)."""
    group.attrs[SEAL] = True


def producing_rule(path: str | os.PathLike) -> str | None:
    """The rule that writes ``path``, from the artifact templates of :mod:`diffattr.workflow.layout`
    (None if unknown)."""
    return layout.producing_rule(path)


def rebuild_advice(path: str | os.PathLike) -> str:
    """How to rebuild ``path``: force-run its producing rule (or rerun the workflow after deleting it)."""
    rule = producing_rule(path)
    if rule is None:
        return "delete it and rerun the step that wrote it"
    return f"delete it or rebuild it with `snakemake --forcerun {rule}`"


def missing_advice(path: str | os.PathLike) -> str:
    """How to make a missing ``path``: run its producing rule (or the workflow)."""
    rule = producing_rule(path)
    return "rerun the step that writes it" if rule is None else f"build it with `snakemake --forcerun {rule}`"


def damage_sentence(path: str | os.PathLike, detail: str, what: str = "Store") -> str:
    """The one sentence for a damaged ``path``: what it is, what is damaged, how to rebuild it."""
    return f"{what} '{path}' is truncated or corrupted ({detail}); {rebuild_advice(path)}."


def require_arrays(path: str | os.PathLike, group: zarr.Group, names: tuple[str, ...]) -> None:
    """Raise :class:`StoreError` naming ``path`` and the first of ``names`` that ``group`` lacks."""
    missing = [name for name in names if name not in group]
    if missing:
        raise StoreError(f"Store '{path}' has no array '{missing[0]}'; {rebuild_advice(path)}.")


def _chunk_file(array: zarr.Array, coords: tuple[int, ...]) -> Path | None:
    """The file of chunk ``coords`` of a local array with zarr v3's default chunk keys (else None)."""
    root = getattr(array.store, "root", None)
    encoding = getattr(array.metadata, "chunk_key_encoding", None)
    if root is None or encoding is None:
        return None
    return Path(root) / array.path / encoding.encode_chunk_key(coords)


def missing_chunk(array: zarr.Array) -> tuple[int, ...] | None:
    """The first chunk of ``array`` without a file, or None when every chunk is present (or the
    store is not a local directory store, where this cannot be told cheaply)."""
    if array.nchunks_initialized == array.nchunks:
        return None
    for coords in np.ndindex(*array.cdata_shape):
        path = _chunk_file(array, coords)
        if path is not None and not path.is_file():
            return tuple(int(c) for c in coords)
    return None


def _arrays(group: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, member in group.members():
        if isinstance(member, zarr.Array):
            yield prefix + name, member
        else:
            yield from _arrays(member, f"{prefix}{name}/")


def open_store(path: str | os.PathLike) -> zarr.Group:
    """Open the zarr group at ``path`` for reading, checking that it opens and, for a sealed store,
    that no array is missing a chunk; damage raises :class:`StoreError` (existence is the caller's)."""
    try:
        group = zarr.open_group(str(path), mode="r")
        sealed = bool(group.attrs.get(SEAL, False))
        arrays = list(_arrays(group)) if sealed else []
    except Exception as err:  # unreadable zarr.json: a codec/JSON/IO error, whatever zarr raises
        raise StoreError(damage_sentence(path, f"its metadata cannot be read: {type(err).__name__}")) from err
    for name, array in arrays:
        coords = missing_chunk(array)
        if coords is not None:
            raise StoreError(damage_sentence(path, f"array '{name}', chunk {coords} is missing"))
    return group


def bad_chunk(array: zarr.Array) -> tuple[int, ...] | None:
    """The first chunk of ``array`` that fails to decode (None if all decode): the slow path,
    taken only after a read has failed, to name the chunk."""
    for coords in np.ndindex(*array.cdata_shape):
        try:
            array.blocks[coords]
        except Exception:
            return tuple(int(c) for c in coords)
    return None


def read_array(path: str | os.PathLike, array: zarr.Array, selection: Any = slice(None), name: str | None = None) -> np.ndarray:
    """``array[selection]`` of the store at ``path`` as numpy; a decode error (truncated or garbled
    chunk) raises :class:`StoreError` naming the array and its first bad chunk."""
    with reading(path, array, name):  # zstd/blosc/bytes codec errors on damaged chunk files
        return np.asarray(array[selection])


@contextlib.contextmanager
def reading(path: str | os.PathLike, array: zarr.Array | None = None, name: str | None = None) -> Iterator[None]:
    """Turn any zarr/codec error raised inside the block into a :class:`StoreError` naming ``path``
    (and ``array``'s first bad chunk when given): for reads that go through zarr directly, e.g.
    ``get_orthogonal_selection``."""
    try:
        yield
    except StoreError:
        raise
    except Exception as err:
        coords = None if array is None else bad_chunk(array)
        where = "" if array is None else f"array '{name or array.path}'" + (f", chunk {coords}" if coords is not None else "") + " "
        raise StoreError(damage_sentence(path, f"{where}does not decode: {type(err).__name__}")) from err


def check_safetensors(path: str | os.PathLike) -> None:
    """Check that the safetensors file at ``path`` is whole: an 8-byte little-endian header length
    n, an n-byte JSON header, and exactly as many data bytes as its largest tensor end offset; a
    short, long or unparsable file raises :class:`StoreError` naming it (reads the header only)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > size - 8:
                raise ValueError("its header runs past the end of the file")
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise StoreError(damage_sentence(path, f"unreadable header: {err}", "Checkpoint")) from err
    if size != 8 + n + end:
        raise StoreError(damage_sentence(path, f"{size} bytes, its header says {8 + n + end}", "Checkpoint"))


# --- Snakemake's update() flag: what it leaves to us ---------------------------------------------
#
# Outputs of the expensive rules are flagged ``update(...)`` so that Snakemake does not delete a
# finished output before the job that replaces it has finished (our writes are atomic, so the live
# output is always whole). Snakemake 9.27 then copies the output to .snakemake/backups before the
# job and restores it when the job fails, but (1) it records a failed job's params, code and inputs
# as if the job had finished, so after a failed rerun the restored old output passes as up to
# date, and (2) a run killed mid-job leaves the backup behind, and the next backup of that
# directory fails with FileExistsError. The two hooks below close both; the Snakefile calls them:
#
#     onstart:
#         settle_backups(update_outputs(workflow.dag.needrun_jobs()), workflow.persistence.path / "backups")
#     onerror:
#         mark_failed_incomplete(workflow)


def backup_of(backup_root: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Where Snakemake keeps the backup of an ``update()`` output: ``backup_root`` + its path
    (an absolute path without its root)."""
    path = Path(output)
    if path.is_absolute():
        path = path.relative_to(path.anchor)
    return Path(backup_root) / path


def update_outputs(jobs: Any) -> list[str]:
    """The ``update()``-flagged outputs of Snakemake ``jobs`` (group jobs are opened up)."""
    from snakemake.io import is_flagged

    return [str(f) for job in jobs for member in getattr(job, "jobs", [job]) for f in member.output
            if is_flagged(f, "update")]


def settle_backups(outputs: list[str], backup_root: str | os.PathLike) -> list[str]:
    """Before a run: for each output with a backup left by an interrupted run, drop the backup when
    the output is in place (it is whole: writes are atomic) or move it back when the output is
    gone (killed while restoring). Returns the outputs it touched."""
    import shutil

    touched = []
    for output in outputs:
        backup = backup_of(backup_root, output)
        if not (backup.exists() or backup.is_symlink()):
            continue
        if Path(output).exists():
            shutil.rmtree(backup) if backup.is_dir() and not backup.is_symlink() else backup.unlink()
        else:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            os.replace(backup, output)
        touched.append(output)
    return touched


def mark_failed_incomplete(workflow: Any) -> list[str]:
    """After a failed run: mark every output of the run's failed jobs incomplete, so that a restored
    ``update()`` output is rebuilt by the next run (``--rerun-incomplete``, as the profiles set)
    instead of passing as up to date. Returns the outputs marked."""
    scheduler = getattr(workflow, "scheduler", None)
    marked = []
    for job in getattr(scheduler, "failed", ()) or ():
        for member in getattr(job, "jobs", [job]):
            workflow.persistence.started(member)
            marked.extend(str(f) for f in member.output)
    return marked
