"""Synthetic FacialFlowNet generator: exact ground truth, layout, determinism, CLI."""

from pathlib import Path

import numpy as np
import pytest

from core import synthetic
from core.utils import flow_io


@pytest.mark.parametrize("emotion", synthetic.EMOTIONS)
def test_flow_maps_each_head_pixel_to_the_same_surface_point(emotion: str) -> None:
    """Analytic exactness: p + flow in frame t+1 sees the texture (facial) / canonical (head) point of p."""
    subject = synthetic.SyntheticSubject.random((96, 112), seed=[7, len(emotion)], emotion=emotion)
    px, py = subject.pixel_grid()
    for t in range(2):
        flow_f, flow_h = subject.flows(t)
        on_head = subject.render(t)[1] >= 0.5
        assert on_head.sum() > 500
        before = np.stack(subject.texture_point(t, px, py), -1)[on_head]
        after = np.stack(subject.texture_point(t + 1, px + flow_f[..., 0], py + flow_f[..., 1]), -1)[on_head]
        np.testing.assert_allclose(after, before, atol=1e-3)
        before = np.stack(subject.canonical_point(t, px, py), -1)[on_head]
        after = np.stack(subject.canonical_point(t + 1, px + flow_h[..., 0], py + flow_h[..., 1]), -1)[on_head]
        np.testing.assert_allclose(after, before, atol=1e-3)
        # outside the head both flows are the background translation
        shift = np.subtract(subject.background_shift(t + 1), subject.background_shift(t))
        np.testing.assert_allclose(flow_f[~on_head], np.broadcast_to(shift, flow_f[~on_head].shape), atol=1e-5)
        np.testing.assert_array_equal(flow_f[~on_head], flow_h[~on_head])


def _pairs(root: Path):
    for flow_path in sorted((root / "flow" / "facial").glob("*/*/*/*.flo")):
        rel = flow_path.relative_to(root / "flow" / "facial")
        yield rel, f"{int(rel.stem) + 1:04d}.jpg"


@pytest.mark.parametrize("kind", ["facial", "head"])
def test_written_ground_truth_warps_frame2_onto_frame1(synthetic_root: Path, kind: str) -> None:
    """Backward-warping JPEG frame i+1 with the stored flow reproduces frame i on face pixels."""
    errors, zero_errors = [], []
    for rel, next_name in _pairs(synthetic_root):
        frames = synthetic_root / "image" / kind / rel.parent
        f1 = flow_io.read_image(frames / rel.with_suffix(".jpg").name)
        f2 = flow_io.read_image(frames / next_name)
        flow = flow_io.read_flo(synthetic_root / "flow" / kind / rel)
        face = synthetic.erode(np.load(synthetic_root / "mask" / rel.with_suffix(".npy")), 2)
        errors.append(synthetic.warp_error(f1, f2, flow, face))
        zero_errors.append(synthetic.warp_error(f1, f2, np.zeros_like(flow), face))
        assert errors[-1] < min(2.5, zero_errors[-1]), (rel, errors[-1], zero_errors[-1])  # JPEG noise floor ~1.5
    assert len(errors) == 3 * 2 * 2
    assert np.mean(errors) < 0.4 * np.mean(zero_errors)


def test_rendered_frames_match_ground_truth_before_jpeg() -> None:
    """Without JPEG the warp error is interpolation error only, far below the zero-flow error."""
    seq = synthetic.render_sequence((128, 128), 3, seed=11, emotion="surprise")
    for i in range(2):
        face = synthetic.erode(seq.masks[i], 2)
        for frames, flow in ((seq.facial_frames, seq.flows_facial[i]), (seq.head_frames, seq.flows_head[i])):
            err = synthetic.warp_error(frames[i], frames[i + 1], flow, face)
            zero = synthetic.warp_error(frames[i], frames[i + 1], np.zeros_like(flow), face)
            assert err < 1.2 and err < 0.3 * zero, (i, err, zero)


def test_layout_counts_masks_and_head_sequence(synthetic_root: Path) -> None:
    seqs = sorted((synthetic_root / "image" / "facial").glob("*/*/*"))
    assert len(seqs) == 3 * 2
    assert {p.parts[-3] for p in seqs} == {"train", "val", "test"}
    expression_seen = 0.0
    for seq in seqs:
        rel = seq.relative_to(synthetic_root / "image" / "facial")
        assert [p.name for p in sorted(seq.iterdir())] == ["0001.jpg", "0002.jpg", "0003.jpg"]
        assert sorted(p.name for p in (synthetic_root / "image" / "head" / rel).iterdir()) == [
            "0001.jpg",
            "0002.jpg",
            "0003.jpg",
        ]
        for kind in ("facial", "head"):
            assert sorted(p.name for p in (synthetic_root / "flow" / kind / rel).iterdir()) == ["0001.flo", "0002.flo"]
        masks = sorted((synthetic_root / "mask" / rel).iterdir())
        assert [p.name for p in masks] == ["0001.npy", "0002.npy", "0003.npy"]  # one mask per frame
        for m in masks:
            mask = np.load(m)
            assert mask.dtype == bool and mask.shape == (128, 128)
            assert 0.03 < mask.mean() < 0.6
        # head frame 1 is facial frame 1 (expression held at the first frame)
        np.testing.assert_array_equal(
            flow_io.read_image(seq / "0001.jpg"),
            flow_io.read_image(synthetic_root / "image" / "head" / rel / "0001.jpg"),
        )
        for stem in ("0001", "0002"):
            facial = flow_io.read_flo(synthetic_root / "flow" / "facial" / rel / f"{stem}.flo")
            head = flow_io.read_flo(synthetic_root / "flow" / "head" / rel / f"{stem}.flo")
            expression_seen = max(expression_seen, float(np.abs(facial - head).max()))
    assert expression_seen > 0.1  # the expression actually moves the face


def test_generation_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(subjects=1, frames=2, size=(64, 80), splits=("train",))
    synthetic.generate(tmp_path / "a", seed=3, **kwargs)
    synthetic.generate(tmp_path / "b", seed=3, **kwargs)
    synthetic.generate(tmp_path / "c", seed=4, **kwargs)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 + 2 + 1 + 1 + 2
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert any((tmp_path / "a" / rel).read_bytes() != (tmp_path / "c" / rel).read_bytes() for rel in files)


def test_render_sequence_demo_pair_and_argument_errors() -> None:
    seq = synthetic.render_sequence((64, 64), 2, seed=0, emotion="surprise")
    assert len(seq.facial_frames) == 2 and len(seq.flows_facial) == 1 and len(seq.masks) == 2
    assert seq.facial_frames[0].dtype == np.uint8 and seq.facial_frames[0].shape == (64, 64, 3)
    assert seq.flows_head[0].dtype == np.float32 and seq.flows_head[0].shape == (64, 64, 2)
    with pytest.raises(ValueError, match="2 frames"):
        synthetic.render_sequence((64, 64), 1, seed=0)
    with pytest.raises(ValueError, match="emotion"):
        synthetic.render_sequence((64, 64), 2, seed=0, emotion="bored")


def test_cli_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        synthetic.main(["--help"])
    text = capsys.readouterr().out
    for option in (
        "--root",
        "--subjects",
        "--frames",
        "--size",
        "--seed",
        "--frame_interval",
        "--splits",
        "--verify",
        "--no-progress",
    ):
        assert option in text


def test_cli_writes_and_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    synthetic.main(
        [
            "--root",
            str(tmp_path),
            "--subjects",
            "1",
            "--frames",
            "2",
            "--size",
            "64",
            "64",
            "--splits",
            "val",
            "--verify",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert "wrote 1 sequences (1 pairs, 64x64)" in out and "warp error" in out
    assert (tmp_path / "flow" / "head" / "val" / "angry" / "subject001" / "0001.flo").is_file()


@pytest.mark.parametrize("flags, bar", [([], True), (["--no-progress"], False), (["--no_progress"], False)])
def test_cli_accepts_both_spellings_of_no_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], bar: bool
) -> None:
    synthetic.main(
        ["--root", str(tmp_path), "--subjects", "1", "--frames", "2", "--size", "32", "32", "--splits", "val", *flags]
    )
    captured = capsys.readouterr()
    assert "wrote 1 sequences" in captured.out
    assert ("synthetic FacialFlowNet" in captured.err) == bar  # the progress bar


def assert_first_facial_flow_exact(subject: synthetic.SyntheticSubject) -> None:
    """p + facial flow in frame 1 sees the texture point that head pixel p sees in frame 0."""
    px, py = subject.pixel_grid()
    flow_f, _ = subject.flows(0)
    on_head = subject.render(0)[1] >= 0.5
    before = np.stack(subject.texture_point(0, px, py), -1)[on_head]
    after = np.stack(subject.texture_point(1, px + flow_f[..., 0], py + flow_f[..., 1]), -1)[on_head]
    np.testing.assert_allclose(after, before, atol=1e-3)


def test_frame_interval_renders_the_same_motion_at_a_lower_frame_rate() -> None:
    """Frame 1 at interval 2 is frame 2 at interval 1, and its flows are exact (texture points match)."""
    slow = synthetic.render_sequence((96, 96), 3, seed=4, emotion="surprise")
    fast = synthetic.render_sequence((96, 96), 2, seed=4, emotion="surprise", frame_interval=2.0)
    np.testing.assert_array_equal(fast.facial_frames[1], slow.facial_frames[2])
    np.testing.assert_array_equal(fast.head_frames[1], slow.head_frames[2])
    np.testing.assert_array_equal(fast.masks[1], slow.masks[2])
    assert_first_facial_flow_exact(
        synthetic.SyntheticSubject.random((96, 96), seed=4, emotion="surprise", frame_interval=2.0)
    )
    with pytest.raises(ValueError, match="frame_interval"):
        synthetic.render_sequence((64, 64), 2, seed=0, frame_interval=0.0)


def test_frame_interval_scales_the_motion_per_frame() -> None:
    """Interval 2 at 128x128 moves the face about as far per frame as interval 1 at 256x256: pixels, not a fraction."""

    def mean_face_motion(size: int, interval: float) -> float:
        magnitudes = []
        for j in range(6):
            seq = synthetic.render_sequence(
                (size, size), 3, seed=[9, j], emotion=synthetic.EMOTIONS[j % 5], frame_interval=interval
            )
            magnitudes += [np.linalg.norm(f[m], axis=-1).mean() for f, m in zip(seq.flows_facial, seq.masks)]
        return float(np.mean(magnitudes))

    small, small_fast, large = mean_face_motion(128, 1.0), mean_face_motion(128, 2.0), mean_face_motion(256, 1.0)
    assert 1.5 * small < small_fast < 3.0 * small  # not exactly 2x: the motions are smooth, not linear in time
    assert 0.7 * large < small_fast < 1.4 * large
    assert small_fast > 2.0  # pixels


def test_cli_frame_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--subjects", "1", "--frames", "2", "--size", "64", "64", "--splits", "val", "--no-progress"]
    synthetic.main(["--root", str(tmp_path / "a"), *argv])
    synthetic.main(["--root", str(tmp_path / "b"), *argv, "--frame_interval", "2.5"])
    rel = Path("flow", "facial", "val", "angry", "subject001", "0001.flo")
    slow, fast = (flow_io.read_flo(tmp_path / root / rel) for root in ("a", "b"))
    assert np.abs(fast).mean() > 1.5 * np.abs(slow).mean()


def test_face_scale_enlarges_the_face_and_keeps_the_default() -> None:
    """face_scale 1 is the default draw (identical frames); 2 makes the face about 4x larger in area,
    with exact flow."""
    default = synthetic.render_sequence((96, 96), 2, seed=5, emotion="sad")
    same = synthetic.render_sequence((96, 96), 2, seed=5, emotion="sad", face_scale=1.0)
    np.testing.assert_array_equal(same.facial_frames[0], default.facial_frames[0])
    np.testing.assert_array_equal(same.flows_facial[0], default.flows_facial[0])
    large = synthetic.SyntheticSubject.random((160, 160), seed=5, emotion="sad", face_scale=2.0)
    small = synthetic.SyntheticSubject.random((160, 160), seed=5, emotion="sad")
    face_large, face_small = (s.render(0)[2] >= 0.5 for s in (large, small))
    assert 3.0 * face_small.sum() < face_large.sum() < 4.5 * face_small.sum()
    assert face_large.mean() > 0.4  # the face fills much of the frame
    assert_first_facial_flow_exact(large)
    with pytest.raises(ValueError, match="face_scale"):
        synthetic.render_sequence((64, 64), 2, seed=0, face_scale=0.0)
