"""get_flow.py --corpus: sequences found under a folder, shares of processes, folders put in
place whole, the rerun rules, failures recorded, progress over ranks, and a kill -9 mid-run."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import get_flow
from core.cli import exit_on_error
from core.extract.corpus import (
    MANIFEST_NAME,
    PROGRESS_FOLDER,
    Progress,
    Sequence,
    Shard,
    describe_mixed,
    discover_sequences,
    parse_shard,
    remove_leftovers,
    resolve_shard,
    staged_folder,
)
from core.utils.flow_io import read_flo
from tests.face_helpers import astronaut_clip

REPO = Path(__file__).resolve().parents[1]
SIZE = (48, 64)  # frames are padded to the network's 128 px: tiny files, the same cost per pair


def write_frames(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = [folder / f"{i:04d}.png" for i in range(count)]
    for path in paths:
        cv2.imwrite(str(path), rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    return paths


def write_video(path: Path, count: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (SIZE[1], SIZE[0]))
    for _ in range(count):
        writer.write(rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8))
    writer.release()


def run(checkpoint: Path, *argv: str) -> list[Path]:
    args = get_flow.get_args_parser().parse_args(["--model", str(checkpoint), "--iters", "1", "--device", "cpu", *argv])
    return get_flow.main(args)


def summary(text: str) -> tuple[int, int, int]:
    """(done, skipped, failed) of a summary line."""
    found = re.search(r"(\d+) done, (\d+) skipped, (\d+) failed of \d+ sequences in [\d.]+ s \(\d+ pairs", text)
    assert found, text
    return tuple(int(n) for n in found.groups())


def inodes(output: Path, names: list[str]) -> dict[str, int]:
    return {name: (output / name).stat().st_ino for name in names}


def hidden_entries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob(".*")]


# ------------------------------------------------------------------ sequences and shares
def test_sequences_are_leaf_folders_of_frames_and_video_files(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for rel in ["a/s1/0001.png", "a/s1/0002.png", "a/s2/x.jpg", "n/s10/1.png", "n/s2/1.png", "b/s3/1.PNG"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    for rel in ["b/clip.MP4", "v.avi", "mixed/1.png", "mixed/sub/2.png", ".hidden/s/1.png", "c/notes.txt", "d/.x.png"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    sequences, mixed = discover_sequences(root)
    assert [(s.relative, s.kind) for s in sequences] == [
        ("a/s1", "frames"),
        ("a/s2", "frames"),
        ("b/clip.MP4", "video"),  # its outputs go to a folder named after the file
        ("b/s3", "frames"),
        ("mixed/sub", "frames"),
        ("n/s2", "frames"),  # natural order: s2 before s10
        ("n/s10", "frames"),
        ("v.avi", "video"),
    ]
    assert sequences[0].path == root / "a" / "s1" and sequences[2].path == root / "b" / "clip.MP4"
    assert mixed == ["mixed"]  # frames beside a subfolder: its outputs would hold another sequence's
    assert describe_mixed(["a", "b", "c", "d"]).startswith(
        "4 folders hold frames"
    ) and "(a, b, c ...)" in describe_mixed(["a", "b", "c", "d"])


def test_shards_take_whole_sequences_once_each() -> None:
    sequences = [Sequence(Path(f"s{i}"), f"s{i}", "frames") for i in range(10)]
    for count in (1, 2, 3, 4):
        shares = [Shard(index, count).take(sequences) for index in range(count)]
        assert sorted((s for share in shares for s in share), key=sequences.index) == sequences  # each once
        assert shares[count - 1] == sequences[count - 1 :: count]  # deterministic: I, I+N, ...
    assert parse_shard("1/3") == (1, 3) and parse_shard(" 0 / 1 ") == (0, 1)
    for text, message in [("3/2", "one of 0..N-1"), ("2/2", "one of 0..N-1"), ("0/0", "one of"), ("a/b", "give I/N")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_shard(text)
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert resolve_shard(None, torchrun) == Shard(3, 4, 1) and resolve_shard(None, torchrun).torchrun
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) == Shard()
    assert resolve_shard("1/2", {}) == Shard(1, 2) and not resolve_shard("1/2", {}).torchrun
    with pytest.raises(ValueError, match="drop --shard"):
        resolve_shard("0/2", torchrun)


def test_staged_folder_replaces_whole_or_leaves_everything_as_it_was(tmp_path: Path) -> None:
    target = tmp_path / "out" / "seq"
    with staged_folder(target) as folder:
        assert folder.parent == target.parent and folder.name.startswith(".seq.") and not target.exists()
        (folder / "a.txt").write_text("first")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with pytest.raises(RuntimeError), staged_folder(target) as folder:
        (folder / "b.txt").write_text("second")
        raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["a.txt"]  # the earlier folder as it was
    with staged_folder(target) as folder:
        (folder / "b.txt").write_text("second")
    assert [p.name for p in target.iterdir()] == ["b.txt"]  # replaced whole
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    link = tmp_path / "out" / "linked"
    link.symlink_to(elsewhere)
    with staged_folder(link) as folder:
        (folder / "c.txt").write_text("third")
    assert not link.is_symlink() and [p.name for p in link.iterdir()] == ["c.txt"]
    assert [p.name for p in elsewhere.iterdir()] == ["keep.txt"]  # a link is replaced, its target kept
    assert hidden_entries(tmp_path / "out") == []


def test_leftovers_of_a_killed_run_are_removed_for_their_own_sequence_only(tmp_path: Path) -> None:
    names = [".clip.12-0123abcd.partial", ".clip.7-deadbeef.replaced", ".clip.mp4.12-0123abcd.partial"]
    names += [".clipx.1-00000000.partial", ".clip.12-0123abcd.partial.txt"]
    for name in names:
        (tmp_path / name).mkdir()
    (tmp_path / ".clip.12-0123abcd.partial" / "pair_flow.png").write_bytes(b"half")
    removed = remove_leftovers([tmp_path / "clip", tmp_path / "missing" / "seq"])
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


def test_the_lead_shows_one_bar_over_every_rank_and_gathers_failures(tmp_path: Path) -> None:
    (tmp_path / PROGRESS_FOLDER).mkdir()
    quiet = io.StringIO()
    other = Progress(total=4, shard=Shard(1, 2, local_rank=1), output=tmp_path, stream=quiet)
    other.pair()
    other.pair()
    other.sequence("done", "a")
    other.sequence("failed", "b", "frames folder b has 1 usable image(s)")
    assert other.finish().done == 1
    assert quiet.getvalue() == ""  # no bar on other ranks
    shown = io.StringIO()
    lead = Progress(total=4, shard=Shard(0, 2, local_rank=0), output=tmp_path, stream=shown)
    lead.sequence("skipped", "c")
    lead.sequence("skipped", "d")
    total = lead.finish()
    assert (total.done, total.skipped, total.failed, total.pairs) == (1, 2, 1, 2)
    assert "4/4" in shown.getvalue() and "2 pairs" in shown.getvalue() and "pairs/s, 1 failed" in shown.getvalue()
    lines = (tmp_path / "failures.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"sequence": "b", "error": "frames folder b has 1 usable image(s)"}]
    assert not (tmp_path / PROGRESS_FOLDER).exists()  # the ranks' files go at the end


# ------------------------------------------------------------------ runs
def test_options_work_inside_each_sequence_as_for_one_sequence(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """Five runs of two pairs each (about 20 s on 2 loaded cores): the corpus against --frames/--video."""
    corpus = tmp_path / "corpus"
    write_frames(corpus / "happy" / "s1", 5, seed=1)
    write_video(corpus / "clips" / "c.mp4", 5, seed=2)
    options = ("--warm_start", "--stride", "2", "--max_frames", "3", "--save_format", "npy")
    run(decflow_checkpoint, "--corpus", str(corpus), "--output", str(tmp_path / "out"), *options)
    run(decflow_checkpoint, "--frames", str(corpus / "happy" / "s1"), "--output", str(tmp_path / "one"), *options)
    run(decflow_checkpoint, "--video", str(corpus / "clips" / "c.mp4"), "--output", str(tmp_path / "one"), *options)
    for folder, names in [("happy/s1", ["s1_0000-0002", "s1_0002-0004"]), ("clips/c.mp4", ["c_000000", "c_000002"])]:
        written = sorted(p.name for p in (tmp_path / "out" / folder).iterdir())
        expected = [f"{n}_{k}" for n in names for k in ("expression.npy", "facial.npy", "flow.png", "head.npy")]
        assert written == sorted(expected + [MANIFEST_NAME] + (["c_flow.mp4"] if "mp4" in folder else []))
        for name in expected:
            if name.endswith(".npy"):
                np.testing.assert_array_equal(
                    np.load(tmp_path / "out" / folder / name), np.load(tmp_path / "one" / name)
                )
    manifest = json.loads((tmp_path / "out" / "happy" / "s1" / MANIFEST_NAME).read_text())
    assert manifest["frames"] == 3 and [entry["name"] for entry in manifest["request"]["inputs"]] == [
        "0000.png",
        "0002.png",
        "0004.png",
    ]
    recorded = manifest["request"]["options"]
    assert {"warm_start": True, "stride": 2, "max_frames": 3, "iters": 1}.items() <= recorded.items()
    ran = {"precision": "float32", "alternate_corr": False, "num_heads": 1, "position_only": False}
    assert ran.items() <= recorded.items()  # from the estimator that ran (FlowEstimator.description)
    files = manifest["file_bytes"]
    assert files == {n: (tmp_path / "out" / "happy" / "s1" / n).stat().st_size for n in files}
    run(
        decflow_checkpoint,
        "--corpus",
        str(corpus),
        "--output",
        str(tmp_path / "out"),
        "--batch_size",
        "2",
        "--save_flo",
    )
    run(
        decflow_checkpoint,
        "--frames",
        str(corpus / "happy" / "s1"),
        "--output",
        str(tmp_path / "b2"),
        "--batch_size",
        "2",
        "--save_flo",
    )
    for name in ("s1_0000-0001_facial.flo", "s1_0003-0004_expression.flo"):
        np.testing.assert_array_equal(
            read_flo(tmp_path / "out" / "happy" / "s1" / name), read_flo(tmp_path / "b2" / name)
        )
    assert not (tmp_path / "out" / "happy" / "s1" / "s1_0000-0002_facial.npy").exists()  # redone whole


def test_rerun_skips_what_matches_and_redoes_the_rest(decflow_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """Seven runs of one-pair sequences (about 12 s on 2 loaded cores): each rule of the manifest."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    names = ["s1", "s2", "s3"]
    frames = {name: write_frames(corpus / name, 2, seed=i) for i, name in enumerate(names)}
    corpus_run = ("--corpus", str(corpus), "--output", str(out))

    def rerun(*extra: str) -> tuple[tuple[int, int, int], dict[str, int]]:
        capsys.readouterr()
        run(decflow_checkpoint, *corpus_run, *extra)
        return summary(capsys.readouterr().out), inodes(out, names)

    assert rerun()[0] == (3, 0, 0)
    counts, first = rerun()
    assert counts == (0, 3, 0)
    (out / "s2" / "s2_0000-0001_flow.png").unlink()
    counts, second = rerun()
    assert counts == (1, 2, 0) and second["s2"] != first["s2"] and second["s1"] == first["s1"]  # a missing file
    write_frames(corpus / "s3", 2, seed=9)  # other pictures in s3
    counts, third = rerun()
    assert counts == (1, 2, 0) and third["s3"] != second["s3"] and third["s1"] == first["s1"]  # a changed input
    assert rerun("--iters", "2")[0] == (3, 0, 0)  # other options: not the manifest's
    assert rerun("--iters", "2")[0] == (0, 3, 0)
    assert rerun("--iters", "2", "--overwrite")[0] == (3, 0, 0)
    write_frames(corpus / "s4", 2)
    (out / "s4").mkdir()
    (out / "s4" / "mine.txt").write_text("not a corpus run's")
    with pytest.raises(SystemExit, match=r"1 of 4 sequences failed \(reasons in .*failures.jsonl\)"):
        run(decflow_checkpoint, *corpus_run, "--iters", "2")
    assert "in the way: no --corpus run wrote it" in (out / "failures.jsonl").read_text()
    assert (out / "s4" / "mine.txt").is_file()
    assert frames["s1"][0].is_file() and hidden_entries(out) == []


def test_a_manifest_of_an_earlier_version_is_redone(decflow_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """A manifest as version 1 wrote it (input sizes and file sizes without their units): the rerun
    redoes the sequence, and its new manifest names the units."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    frames = write_frames(corpus / "s1", 2)
    run(decflow_checkpoint, "--corpus", str(corpus), "--output", str(out))
    manifest = json.loads((out / "s1" / MANIFEST_NAME).read_text())
    older = {
        "sequence": "s1",
        "request": {
            **manifest["request"],
            "version": 1,
            "inputs": [[path.name, path.stat().st_size, path.stat().st_mtime_ns] for path in frames],
        },
        "frames": 2,
        "files": manifest["file_bytes"],
    }
    (out / "s1" / MANIFEST_NAME).write_text(json.dumps(older))
    capsys.readouterr()
    run(decflow_checkpoint, "--corpus", str(corpus), "--output", str(out))
    assert summary(capsys.readouterr().out) == (1, 0, 0)
    manifest = json.loads((out / "s1" / MANIFEST_NAME).read_text())
    assert manifest["request"]["version"] == 2
    assert manifest["request"]["inputs"] == [
        {"name": path.name, "size_bytes": path.stat().st_size, "mtime_ns": path.stat().st_mtime_ns} for path in frames
    ]
    assert manifest["file_bytes"] == {"s1_0000-0001_flow.png": (out / "s1" / "s1_0000-0001_flow.png").stat().st_size}


def test_failures_do_not_stop_the_corpus(decflow_checkpoint: Path, tmp_path: Path) -> None:
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_frames(corpus / "good", 2)
    damaged = write_frames(corpus / "damaged", 3)
    damaged[1].write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_frames(corpus / "single", 1)
    (corpus / "broken.mp4").write_bytes(b"no video here")
    with pytest.raises(SystemExit, match=r"^get_flow.py: error: 3 of 4 sequences failed \(reasons in "):
        run(decflow_checkpoint, "--corpus", str(corpus), "--output", str(out))
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [r["sequence"] for r in records] == ["broken.mp4", "damaged", "single"]
    assert "cannot open video" in records[0]["error"] and str(damaged[1]) in records[1]["error"]
    assert "has 1 usable image(s)" in records[2]["error"]
    assert sorted(p.name for p in out.iterdir()) == ["failures.jsonl", "good"]  # nothing of the failed ones
    assert (out / "good" / MANIFEST_NAME).is_file()


def test_bad_corpora_are_one_line_errors(decflow_checkpoint: Path, tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "corpus"
    write_frames(corpus / "s1", 2)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("")
    for argv, message in [
        (["--corpus", str(tmp_path / "empty")], "no sequence"),
        (["--corpus", str(corpus), "--output", str(corpus / "flows")], "is inside --corpus"),
        (["--corpus", str(corpus), "--output", str(tmp_path)], "is inside --output"),
        (["--corpus", str(corpus), "--shard", "3/2"], "--shard 3/2: I must be one of 0..N-1"),
        (["--corpus", str(corpus / "s1")], "is itself a folder of frames: use --frames"),
        (["--corpus", str(corpus), "--video", "a.mp4"], "--corpus and --video were both given"),
        (["--corpus", str(tmp_path / "nowhere")], "not found"),
        (["--shard", "0/2"], "give --corpus"),
    ]:
        args = get_flow.get_args_parser().parse_args(["--output", str(tmp_path / "out"), *argv])
        with pytest.raises(SystemExit, match=re.escape(message)):
            get_flow.main(args)
    single = tmp_path / "single"
    write_frames(single / "s", 1)
    args = get_flow.get_args_parser().parse_args(
        ["--corpus", str(single), "--output", str(tmp_path / "out"), "--model", str(decflow_checkpoint)]
    )
    with pytest.raises(SystemExit) as stop:
        exit_on_error(lambda: get_flow.main(args))
    assert stop.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert len(line) < 200 and re.fullmatch(
        r"get_flow.py: error: no readable sequence in --corpus \(1 failed; reasons in .*failures.jsonl\)", line
    )


# ------------------------------------------------------------------ processes
def _start(checkpoint: Path, corpus: Path, out: Path, shard: str) -> subprocess.Popen:
    command = [sys.executable, "get_flow.py", "--corpus", str(corpus), "--output", str(out), "--shard", shard]
    command += ["--model", str(checkpoint), "--iters", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_mid_run_then_rerun_redoes_at_most_the_sequence_in_flight(
    decflow_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    """Two shards as two processes, one killed while writing its second sequence, then both again.
    Slow: each process imports torch and loads the model (60 s measured on 2 cores that other
    jobs kept at a load average of 8; most of it is the two imports)."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    names = [f"s{i}" for i in range(6)]
    for i, name in enumerate(names):
        write_frames(corpus / name, 3, seed=i)
    mine = names[1::2]  # shard 1/2's
    first, second = _start(decflow_checkpoint, corpus, out, "0/2"), _start(decflow_checkpoint, corpus, out, "1/2")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and second.poll() is None:
        if (out / mine[0] / MANIFEST_NAME).is_file() and any(out.glob(f".{mine[1]}.*.partial")):
            break
        time.sleep(0.02)
    assert second.poll() is None, "shard 1/2 ended before it could be killed mid-sequence"
    second.send_signal(signal.SIGKILL)
    second.wait()
    assert first.wait(timeout=240) == 0, first.communicate()
    complete = [name for name in names if (out / name / MANIFEST_NAME).is_file()]
    in_flight = [p.name for p in out.iterdir() if p.name.endswith(".partial")]
    assert mine[0] in complete and mine[2] not in complete and len(in_flight) <= 1, (complete, in_flight)
    before = inodes(out, complete)
    capsys.readouterr()
    for shard in ("0/2", "1/2"):  # the reruns in this process: what they find matters, not how they start
        run(decflow_checkpoint, "--corpus", str(corpus), "--output", str(out), "--shard", shard)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shard 0/2: ") and summary(lines[0]) == (0, 3, 0)
    redone = [name for name in mine if name not in complete]
    assert lines[1].startswith("shard 1/2: ") and summary(lines[1]) == (len(redone), 3 - len(redone), 0)
    assert inodes(out, complete) == before  # complete sequences were not written again
    assert sorted(p.name for p in out.iterdir()) == names and hidden_entries(out) == []
    for name in names:
        manifest = json.loads((out / name / MANIFEST_NAME).read_text())
        pairs = [f"{name}_0000-0001_flow.png", f"{name}_0001-0002_flow.png"]
        assert sorted(manifest["file_bytes"]) == pairs  # no file twice, none missing
        assert sorted(p.name for p in (out / name).iterdir()) == sorted(pairs + [MANIFEST_NAME])


def test_torchrun_ranks_share_the_corpus_and_rank_0_reports_it(decflow_checkpoint: Path, tmp_path: Path) -> None:
    """torchrun with 2 CPU (gloo) processes: the real launcher, its environment and the barrier
    (about 35 s on 2 loaded cores: two processes import torch and load the model)."""
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    for i in range(3):
        write_frames(corpus / f"s{i}", 2, seed=i)
    write_frames(corpus / "single", 1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "get_flow.py"]
    command += ["--corpus", str(corpus), "--output", str(out), "--model", str(decflow_checkpoint), "--iters", "1"]
    result = subprocess.run(
        command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=400
    )
    assert result.returncode != 0  # rank 0 exits with the failure
    summaries = [line for line in result.stdout.splitlines() if " done, " in line]
    assert len(summaries) == 1 and summary(summaries[0]) == (3, 0, 1)  # one summary, over both ranks
    assert "1 of 4 sequences failed" in result.stderr
    assert result.stderr.count("0/4 [00:00<?, ?seq/s]") == 1  # one bar (its first drawing; redrawn as pairs finish)
    records = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [r["sequence"] for r in records] == ["single"]  # from rank 1 (sequences s0, s2 / s1, single)
    assert sorted(p.name for p in out.iterdir()) == ["failures.jsonl", "s0", "s1", "s2"]  # no progress files left


def test_face_crop_and_strain_inside_a_corpus(decflow_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """The astronaut clip (3 frames of 1280x720) as one sequence of a corpus (about 10 s on 2 cores:
    Haar on each frame): the crop and strain files of a single run, and a manifest that records the
    face crop's options, so that another margin redoes the sequence."""
    corpus = tmp_path / "corpus"
    (corpus / "clip").mkdir(parents=True)
    for i, frame in enumerate(astronaut_clip(3)):
        cv2.imwrite(str(corpus / "clip" / f"{i:04d}.png"), frame[:, :, ::-1])
    options = ("--face_crop", "--face_size", "128", "--save_strain", "--save_format", "npy")
    corpus_run = ("--corpus", str(corpus), "--output", str(tmp_path / "out"), *options)
    run(decflow_checkpoint, *corpus_run)
    run(decflow_checkpoint, "--frames", str(corpus / "clip"), "--output", str(tmp_path / "one"), *options)
    folder = tmp_path / "out" / "clip"
    for name in ("clip_0000-0001_expression.npy", "clip_0001-0002_strain.npy"):
        np.testing.assert_array_equal(np.load(folder / name), np.load(tmp_path / "one" / name))
    assert (
        json.loads((folder / "clip_face.json").read_text())["box_xywh_frame_px"]
        == json.loads((tmp_path / "one" / "clip_face.json").read_text())["box_xywh_frame_px"]
    )
    assert (folder / "clip_strain.csv").read_text() == (tmp_path / "one" / "clip_strain.csv").read_text()
    recorded = json.loads((folder / MANIFEST_NAME).read_text())["request"]["options"]
    assert recorded["face_crop"] == {
        "detector": "haar",
        "margin_face_sides": 0.25,
        "crop_side_px": 128,
        "paste_back": False,
    }
    assert recorded["save_strain"] is True
    capsys.readouterr()
    run(decflow_checkpoint, *corpus_run)
    assert summary(capsys.readouterr().out) == (0, 1, 0)
    run(decflow_checkpoint, *corpus_run, "--face_margin", "0.5")
    assert summary(capsys.readouterr().out) == (1, 0, 0)
    recorded = json.loads((folder / MANIFEST_NAME).read_text())["request"]["options"]
    assert recorded["face_crop"]["margin_face_sides"] == 0.5
