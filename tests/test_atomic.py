"""Outputs appear complete or not at all."""

from pathlib import Path

import pytest

from diffattr.atomic import atomic_path, write_text


def test_failed_write_leaves_previous_output_and_no_temporary(tmp_path: Path):
    target = tmp_path / "out.csv"
    write_text(target, "finished work\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "finished work\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_directory_output_is_renamed_whole(tmp_path: Path):
    target = tmp_path / "store.zarr"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "chunk").write_text("x")
        assert not target.exists()
    assert (target / "chunk").read_text() == "x"
