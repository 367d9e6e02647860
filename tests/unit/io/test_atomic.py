import os
import stat

import pytest

from compressor.io import atomic


def test_write_replaces_whole_file_with_open_permissions(tmp_path):
    path = tmp_path / "sub" / "report.json"
    atomic.write_json(path, {"a": 1})
    atomic.write_json(path, {"a": 2})
    assert path.read_text() == '{\n  "a": 2\n}\n'
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary left


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "policy.json"
    atomic.write_text(path, "old")

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic.write_via(path, half_then_crash)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


def test_append_line_adds_one_newline_terminated_line(tmp_path):
    log = tmp_path / "episodes.jsonl"
    atomic.append_line(log, '{"episode": 1}\n')
    atomic.append_line(log, '{"episode": 2}')
    assert log.read_text().splitlines() == ['{"episode": 1}', '{"episode": 2}']
