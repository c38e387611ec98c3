"""Atomic writes: nothing half-written, and the files they leave have ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from cmm.io import atomic_dir, atomic_path, write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_files_and_folders_get_the_umask_mode_not_a_private_one(tmp_path):
    old = os.umask(0o022)
    try:
        from cmm import io

        io._umask.cache_clear()
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
        io._umask.cache_clear()
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "d") == 0o755
    assert (tmp_path / "a.json").read_text().strip() == '{\n  "x": 1\n}'


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
