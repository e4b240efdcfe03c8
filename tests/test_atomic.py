"""The one atomic writer (core.utils.atomic): used by outputs, manifests, checkpoints and downloads."""

import os

import pytest

from core.utils.atomic import atomic_path, atomic_stream, remove_temporaries, temporary_pattern, write_text_atomic


class Planted(Exception):
    pass


@pytest.mark.parametrize("previous", [None, b"previous"])
@pytest.mark.parametrize("mark", [None, ".tmp", ".part"])
def test_a_failed_block_leaves_no_temporary_and_no_partial_target(tmp_path, previous, mark):
    target = tmp_path / "flow.png"
    if previous is not None:
        target.write_bytes(previous)
    with pytest.raises(Planted):
        with atomic_stream(target, mark=mark, durable=True) as stream:
            stream.write(b"half of it")
            raise Planted
    assert sorted(os.listdir(tmp_path)) == ([] if previous is None else ["flow.png"])
    if previous is not None:
        assert target.read_bytes() == previous


def test_the_temporary_is_hidden_beside_the_target_and_keeps_the_suffix(tmp_path):
    target = tmp_path / "flow.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".flow.png.") and tmp.name.endswith(".tmp.png")
        assert temporary_pattern(target).match(tmp.name)
        tmp.write_bytes(b"new")
    with atomic_path(target, mark=".part") as tmp:
        assert tmp.name.endswith(".part") and temporary_pattern(target, ".part").match(tmp.name)
        tmp.write_bytes(b"newer")
    assert os.listdir(tmp_path) == ["flow.png"] and target.read_bytes() == b"newer"


def test_a_link_at_the_target_is_replaced_never_written_through(tmp_path):
    elsewhere = tmp_path / "input.png"
    elsewhere.write_bytes(b"an input")
    link = tmp_path / "out.png"
    link.symlink_to(elsewhere)
    write_text_atomic(link, "result")
    assert not link.is_symlink() and link.read_text() == "result" and elsewhere.read_bytes() == b"an input"


def test_durable_writes_are_synced_before_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "x.pth"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(target.exists()) or real_fsync(fd))
    with atomic_stream(target, mark=".tmp") as stream:
        stream.write(b"fast")
    assert synced == []
    with atomic_stream(target, mark=".tmp", durable=True) as stream:
        stream.write(b"durable")
    assert synced == [True] and target.read_bytes() == b"durable"  # `True`: the previous file was still there


def test_remove_temporaries_removes_only_that_files_leftovers(tmp_path):
    target = tmp_path / "weights.pth"
    left = [tmp_path / ".weights.pth.abcd_123.part", tmp_path / ".weights.pth.zz99yy88.part"]
    keep = [".weights.pth.abcd_123.tmp", ".weights.pth.short.part", ".other.pth.abcd1234.part", "weights.pth"]
    for path in left + [tmp_path / name for name in keep]:
        path.write_bytes(b"")
    (tmp_path / ".weights.pth.link0000.part").symlink_to(tmp_path / "weights.pth")
    keep.append(".weights.pth.link0000.part")
    assert remove_temporaries(target, ".part") == sorted(left)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
    assert remove_temporaries(tmp_path / "missing" / "weights.pth", ".part") == []
