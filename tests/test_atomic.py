"""Outputs appear complete or not at all, and a kill at any step of a replace loses nothing."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from diffattr import atomic
from diffattr.atomic import SweepAction, atomic_path, describe_sweep, plan_sweep, sweep, write_text

# ---- helpers: outputs as {relative path: bytes}, written and read without diffattr ------------------


def content(kind: str, tag: str) -> dict[str, bytes]:
    """An output's bytes: a file is {"": bytes}; a directory has nested files, and the old and new
    ones differ in their file sets too (so a merge of the two would show)."""
    blob = (tag * 5000).encode() + os.urandom(64)
    if kind == "file":
        return {"": blob}
    return {"a.bin": blob, "sub/b.txt": f"{tag} b".encode(), f"sub/deeper/only-{tag}": tag.encode()}


def place(path: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` at ``path`` with plain writes (a file if the only key is "")."""
    if list(files) == [""]:
        path.write_bytes(files[""])
        return
    for rel, data in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(data)


def snapshot(path: Path) -> dict[str, bytes] | None:
    """What is at ``path`` now, in the shape of :func:`content`; None if nothing is."""
    if not os.path.lexists(path):
        return None
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp-" in p.name or ".aside-" in p.name)


# ---- the body failing ---------------------------------------------------------------------------


def test_failed_write_leaves_previous_output_and_no_temporary(tmp_path: Path):
    target = tmp_path / "out.csv"
    write_text(target, "finished work\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "finished work\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_failed_directory_write_leaves_previous_directory_untouched(tmp_path: Path):
    target = tmp_path / "store.zarr"
    old = content("dir", "old")
    place(target, old)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            place(tmp, content("dir", "new"))
            raise RuntimeError("killed")
    assert snapshot(target) == old
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]


def test_a_failure_after_the_old_output_is_set_aside_puts_it_back(tmp_path: Path, monkeypatch):
    target = tmp_path / "out.bin"
    old = content("file", "old")
    place(target, old)

    def fail_after_aside(step, path):
        if step == "aside":
            assert not target.exists()  # really in the window
            raise OSError("disk gone")

    monkeypatch.setattr(atomic, "_STEP_HOOK", fail_after_aside)
    with pytest.raises(OSError, match="disk gone"):
        with atomic_path(target) as tmp:
            place(tmp, content("file", "new"))
    assert snapshot(target) == old
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_directory_output_is_renamed_whole(tmp_path: Path):
    target = tmp_path / "store.zarr"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "chunk").write_text("x")
        assert not target.exists()
    assert (target / "chunk").read_text() == "x"


# ---- fsync: every file and directory of the new output, the parent after each rename -----------------


def test_every_file_and_directory_is_fsynced_and_the_parent_after_each_rename(tmp_path: Path, monkeypatch):
    target = tmp_path / "made" / "here" / "store.zarr"
    target.parent.mkdir(parents=True)
    place(target, content("dir", "old"))
    events = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(atomic, "_STEP_HOOK", lambda step, path: events.append(("step", step)))
    with atomic_path(target) as tmp:
        place(tmp, content("dir", "new"))
    steps = [e[1] for e in events if e[0] == "step"]
    assert steps == ["written", "synced", "aside", "renamed", "removed"]

    def synced_between(first, second):
        i, j = events.index(("step", first)), events.index(("step", second))
        return {ino for kind, ino in events[i:j] if kind == "fsync"}

    new_inodes = {target.stat().st_ino} | {p.stat().st_ino for p in target.rglob("*")}  # renames keep inodes
    assert len(new_inodes) == 6  # 3 files, 3 directories
    assert new_inodes <= synced_between("written", "synced")
    parent = target.parent.stat().st_ino
    assert parent in synced_between("synced", "aside")
    assert parent in synced_between("aside", "renamed")


def test_created_parent_directories_are_fsynced_in_their_parents(tmp_path: Path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd)))
    write_text(tmp_path / "a" / "b" / "out.txt", "x")
    for directory in (tmp_path, tmp_path / "a", tmp_path / "a" / "b"):
        assert directory.stat().st_ino in synced


# ---- a SIGKILL at each step, then the sweep ---------------------------------------------------------

CHILD = r"""
import json, os, signal, sys
from pathlib import Path
from diffattr import atomic

target, step, files = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])

def kill_at(name, path):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)

atomic._STEP_HOOK = kill_at
with atomic.atomic_path(target) as tmp:
    if list(files) == [""]:
        tmp.write_bytes(bytes.fromhex(files[""]))
    else:
        for rel, data in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(bytes.fromhex(data))
    if step == "body":
        os.kill(os.getpid(), signal.SIGKILL)
"""

# step killed after → (what is at the path once swept, the sweep's actions)
AFTER_SWEEP = {
    "body": ("old", ["removed temporary"]),
    "written": ("old", ["removed temporary"]),
    "synced": ("old", ["removed temporary"]),
    "aside": ("old", ["removed temporary", "restored"]),
    "renamed": ("new", ["removed aside"]),
    "removed": ("new", []),
}
CASES = [(kind, True, step) for kind in ("file", "dir") for step in AFTER_SWEEP] + [
    (kind, False, step) for kind in ("file", "dir") for step in ("body", "written", "synced", "renamed")
]


def kill_replace_at(target: Path, step: str, new: dict[str, bytes]) -> subprocess.CompletedProcess:
    files = json.dumps({rel: data.hex() for rel, data in new.items()})
    return subprocess.run([sys.executable, "-c", CHILD, str(target), step, files], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("kind,has_old,step", CASES)
def test_a_kill_at_any_step_leaves_the_old_or_the_new_output_after_the_sweep(tmp_path: Path, kind, has_old, step):
    out = tmp_path / "results"
    target = out / "models" / ("weights.safetensors" if kind == "file" else "store.zarr")
    target.parent.mkdir(parents=True)
    old, new = content(kind, "old"), content(kind, "new")
    if has_old:
        place(target, old)
    neighbour = out / "models" / "other.csv"
    neighbour.write_text("untouched")

    child = kill_replace_at(target, step, new)
    assert child.returncode == -signal.SIGKILL, child.stderr  # killed exactly there, not finished or crashed
    if step == "aside":
        assert snapshot(target) is None  # the window the sweep exists for
    actions = sweep(out)

    expected, kinds = AFTER_SWEEP[step]
    if not has_old:
        kinds = [k for k in kinds if k == "removed temporary"]
    assert snapshot(target) == (new if expected == "new" else old if has_old else None)
    assert sorted(a.kind for a in actions) == sorted(kinds)
    assert leftovers(out) == []
    assert neighbour.read_text() == "untouched"
    assert sweep(out) == []  # nothing left to repair


# ---- the sweep on its own --------------------------------------------------------------------------


def test_plan_sweep_restores_orphans_removes_finished_asides_and_temporaries():
    names = ["a.csv", ".a.csv.aside-0000000a",  # replace finished: drop the aside
             ".b.zarr.aside-0000000b", ".b.zarr.tmp-1111111b",  # killed in the window: restore, drop the new
             ".c.pt.tmp-2222222c",  # job killed while writing
             ".d.aside-00000001", ".d.aside-00000002",  # two orphans: restore one, the other is then stale
             "e.csv", "x.tmp-12345678", ".x.tmp-1234567", ".x.tmp-1234567G", ".x.aside-zzzzzzzz", ".tmp-12345678"]
    assert plan_sweep(names) == [
        ("removed temporary", ".b.zarr.tmp-1111111b", "b.zarr"),
        ("removed temporary", ".c.pt.tmp-2222222c", "c.pt"),
        ("removed aside", ".a.csv.aside-0000000a", "a.csv"),
        ("restored", ".b.zarr.aside-0000000b", "b.zarr"),
        ("restored", ".d.aside-00000001", "d"),
        ("removed aside", ".d.aside-00000002", "d"),
    ]


def test_sweep_repairs_nested_directories_and_never_descends_into_a_temporary(tmp_path: Path):
    deep = tmp_path / "features" / "spec" / "model"
    deep.mkdir(parents=True)
    place(deep / ".shard-0.zarr.aside-abcdef01", {"x": b"old shard"})
    temporary = tmp_path / ".gram.zarr.tmp-abcdef02"
    place(temporary, {"inner/.part.aside-abcdef03": b"inside a temporary", "inner/.y.tmp-abcdef04": b"t"})
    (tmp_path / "keep.tmp-abcdef05").write_text("not ours")  # no leading dot: a user's file
    actions = sweep(tmp_path)
    assert actions == [SweepAction("removed temporary", temporary), SweepAction("restored", deep / "shard-0.zarr")]
    assert (deep / "shard-0.zarr" / "x").read_bytes() == b"old shard"
    assert (tmp_path / "keep.tmp-abcdef05").read_text() == "not ours"
    assert leftovers(tmp_path) == ["keep.tmp-abcdef05"]


def test_sweep_of_a_missing_root_does_nothing(tmp_path: Path):
    assert sweep(tmp_path / "not-yet") == []


def test_describe_sweep_is_one_line_only_when_something_was_done(tmp_path: Path):
    assert describe_sweep(tmp_path, []) is None
    line = describe_sweep("results", [SweepAction("restored", tmp_path / "a"),
                                      SweepAction("removed temporary", tmp_path / ".b.tmp-00000000"),
                                      SweepAction("removed temporary", tmp_path / ".c.tmp-00000000")])
    assert line == ("diffattr: swept results: restored 1 output(s) an interrupted replace had set aside, "
                    "removed 2 temporary output(s) of killed jobs.")


@pytest.mark.workflow
def test_snakemake_sweeps_the_output_directory_when_it_starts_but_not_in_a_dry_run(tmp_path: Path):
    from workflow import overlay, snakemake

    out = tmp_path / "results"
    data = out / "data"
    (data / "dataset.zarr").mkdir(parents=True)
    (data / "metadata.csv").write_text("done\n")
    (out / "models").mkdir()
    place(out / "models" / ".m.safetensors.aside-0123abcd", {"": b"old weights"})  # killed in the window
    place(data / ".x.zarr.tmp-89abcdef", {"chunk": b"half"})  # killed while writing
    args = ["--configfile", "config/smoke.yaml", overlay(tmp_path, "out", {"output_dir": str(out)}), "-j1",
            "--forcerun", "prepare_data", str(data / "metadata.csv")]

    dry = snakemake("-n", *args, timeout=300)
    assert dry.returncode == 0, dry.stderr
    assert "swept" not in dry.stdout + dry.stderr
    assert leftovers(out) == [".m.safetensors.aside-0123abcd", ".x.zarr.tmp-89abcdef"]

    touched = snakemake("--touch", *args, timeout=300)  # runs no job's code, but is not a dry-run: onstart runs
    assert touched.returncode == 0, touched.stderr
    assert (f"diffattr: swept {out}: restored 1 output(s) an interrupted replace had set aside, "
            "removed 1 temporary output(s) of killed jobs.") in touched.stdout + touched.stderr
    assert (out / "models" / "m.safetensors").read_bytes() == b"old weights"
    assert leftovers(out) == []
