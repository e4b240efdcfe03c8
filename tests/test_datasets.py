"""FacialFlow dataset: pairing, verification errors, augmentation consistency, loader."""

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core import synthetic
from core.datasets import FacialFlow, SampleInfo, default_num_workers, nonfinite_ground_truth, seed_worker
from core.training.data import build_train_loader
from core.utils import flow_io
from core.utils.augmentor import FacialFlowAugmentor

SEQ = Path("train") / "angry" / "subject001"


@pytest.fixture
def damaged_root(synthetic_root: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the synthetic dataset."""
    return Path(shutil.copytree(synthetic_root, tmp_path / "FacialFlowNet"))


def test_pairs_are_indexed_per_sequence(synthetic_root: Path) -> None:
    ds = FacialFlow(split="train", dataset_root=synthetic_root)
    assert len(ds) == 2 * (3 - 1)
    assert ds.extra_info[0] == SampleInfo("angry", "subject001", 0)
    assert [info.emotion for info in ds.extra_info] == ["angry", "angry", "happy", "happy"]
    first, second = ds.image_list[1]
    assert (first.name, second.name) == ("0002.jpg", "0003.jpg")
    assert ds.flow_facial_list[1].name == ds.flow_head_list[1].name == "0002.flo"
    assert ds.mask_list[1].name == "0002.npy"


def test_sample_equals_files_read_directly(synthetic_root: Path) -> None:
    ds = FacialFlow(split="val", dataset_root=synthetic_root)
    img1, img2, flow_f, flow_h, valid_f, valid_h, mask = ds[1]
    assert img1.shape == img2.shape == (3, 128, 128) and img1.dtype == torch.float32
    assert flow_f.shape == flow_h.shape == (2, 128, 128) and flow_f.dtype == torch.float32
    assert valid_f.shape == valid_h.shape == mask.shape == (128, 128)
    assert valid_f.dtype == valid_h.dtype == mask.dtype == torch.float32

    seq = synthetic_root / "image" / "facial" / "val" / "angry" / "subject001"
    labels = Path("val") / "angry" / "subject001"
    np.testing.assert_array_equal(img1.permute(1, 2, 0).numpy(), flow_io.read_image(seq / "0002.jpg"))
    np.testing.assert_array_equal(img2.permute(1, 2, 0).numpy(), flow_io.read_image(seq / "0003.jpg"))
    np.testing.assert_array_equal(
        flow_f.permute(1, 2, 0).numpy(), flow_io.read_flo(synthetic_root / "flow" / "facial" / labels / "0002.flo")
    )
    np.testing.assert_array_equal(
        flow_h.permute(1, 2, 0).numpy(), flow_io.read_flo(synthetic_root / "flow" / "head" / labels / "0002.flo")
    )
    np.testing.assert_array_equal(
        mask.numpy(), np.load(synthetic_root / "mask" / labels / "0002.npy").astype(np.float32)
    )
    assert valid_f.min() == 1 and valid_h.min() == 1


def test_valid_marks_huge_flow_values(damaged_root: Path) -> None:
    path = damaged_root / "flow" / "head" / SEQ / "0001.flo"
    flow = flow_io.read_flo(path)
    flow[5, 7, 1] = -1000.0
    flow_io.write_flo(path, flow)
    _, _, _, _, valid_f, valid_h, _ = FacialFlow(split="train", dataset_root=damaged_root)[0]
    assert valid_h[5, 7] == 0 and valid_h.sum() == 128 * 128 - 1
    assert valid_f.min() == 1


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda r: (r / "flow" / "facial" / SEQ / "0002.flo").unlink(), "found 1; missing 0002.flo"),
        (lambda r: (r / "flow" / "head" / SEQ / "0001.flo").unlink(), "missing 0001.flo"),
        (lambda r: [(r / "mask" / SEQ / f"000{i}.npy").unlink() for i in (1, 3)], "missing 0001.npy"),
        (
            lambda r: shutil.copy(r / "flow" / "facial" / SEQ / "0001.flo", r / "flow" / "facial" / SEQ / "0003.flo"),
            "unexpected 0003.flo",
        ),
        (lambda r: (r / "image" / "facial" / SEQ / "0003.jpg").unlink(), "unexpected 0002.flo"),
        (lambda r: shutil.rmtree(r / "mask" / SEQ), "mask folder"),
        # a gap: a count check alone accepts masks 0001, 0003 and pairs frame 0002 with mask 0003
        (lambda r: (r / "mask" / SEQ / "0002.npy").unlink(), "found 2; missing 0002.npy"),
        (
            lambda r: (r / "flow" / "facial" / SEQ / "0002.flo").rename(r / "flow" / "facial" / SEQ / "0005.flo"),
            "found 2; missing 0002.flo; unexpected 0005.flo",
        ),
        (
            lambda r: (r / "flow" / "head" / SEQ / "0002.flo").rename(r / "flow" / "head" / SEQ / "0002b.flo"),
            "missing 0002.flo; unexpected 0002b.flo",
        ),
        (
            lambda r: shutil.copy(r / "mask" / SEQ / "0001.npy", r / "mask" / SEQ / "0001.NPY"),
            "0001.NPY and 0001.npy both name frame 0001",
        ),
    ],
    ids=[
        "facial-flow",
        "head-flow",
        "mask",
        "extra-flow",
        "missing-frame",
        "mask-folder",
        "mask-gap",
        "renumbered-flow",
        "misnamed-flow",
        "duplicate-mask",
    ],
)
def test_damaged_sequence_is_named(damaged_root: Path, damage, message: str) -> None:
    damage(damaged_root)
    with pytest.raises(ValueError, match=message) as info:
        FacialFlow(split="train", dataset_root=damaged_root)
    assert str(damaged_root / "image" / "facial" / SEQ) in str(info.value)


def _rename_labels(root: Path, seq: Path, pattern: str) -> None:
    """Rename every label file of `seq` to another naming scheme (sorted order kept)."""
    for folder in (root / "flow" / "facial" / seq, root / "flow" / "head" / seq, root / "mask" / seq):
        for i, path in enumerate(sorted(folder.iterdir())):
            path.rename(folder / pattern.format(i=i, suffix=path.suffix))


def test_labels_of_another_naming_scheme_pair_by_order_with_one_warning(damaged_root: Path, caplog) -> None:
    original = FacialFlow(split="train", dataset_root=damaged_root)
    expected = [original[i] for i in range(len(original))]
    for seq in (SEQ, Path("train") / "happy" / "subject002"):
        _rename_labels(damaged_root, seq, "label_{i:02d}{suffix}")
    with caplog.at_level("WARNING"):
        renamed = FacialFlow(split="train", dataset_root=damaged_root)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings  # one per split, not one per sequence or folder
    assert "split train" in warnings[0] and "6 label folders" in warnings[0] and "label_00.flo" in warnings[0]
    assert [p.name for p in renamed.flow_head_list[:2]] == ["label_00.flo", "label_01.flo"]
    assert [p.name for p in renamed.mask_list[:2]] == ["label_00.npy", "label_01.npy"]
    for index, sample in enumerate(expected):  # same tensors: same pairing
        assert all(torch.equal(a, b) for a, b in zip(renamed[index], sample))


def test_labels_of_another_naming_scheme_still_need_the_right_count(damaged_root: Path) -> None:
    _rename_labels(damaged_root, SEQ, "label_{i:02d}{suffix}")
    (damaged_root / "flow" / "facial" / SEQ / "label_01.flo").unlink()
    with pytest.raises(ValueError, match="expected 2, found 1; none is named after a frame") as info:
        FacialFlow(split="train", dataset_root=damaged_root)
    assert str(damaged_root / "flow" / "facial" / SEQ) in str(info.value)


def test_named_labels_pair_by_name_without_warning(synthetic_root: Path, caplog) -> None:
    with caplog.at_level("WARNING"):
        FacialFlow(split="train", dataset_root=synthetic_root)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_non_finite_ground_truth_is_invalid_zeroed_and_found(damaged_root: Path) -> None:
    path = damaged_root / "flow" / "facial" / SEQ / "0001.flo"
    flow = flow_io.read_flo(path)
    flow[3, 4, 0] = np.nan
    flow[6, 2, 1] = np.inf
    flow[7, 7, 0] = -2000.0  # finite but invalid: not a non-finite pixel
    flow_io.write_flo(path, flow)
    _, _, flow_f, flow_h, valid_f, valid_h, _ = FacialFlow(split="train", dataset_root=damaged_root)[0]
    assert valid_f[3, 4] == 0 and valid_f[6, 2] == 0 and valid_f[7, 7] == 0 and valid_f.sum() == 128 * 128 - 3
    assert torch.isfinite(flow_f).all()
    assert (flow_f[:, 3, 4] == 0).all() and (flow_f[:, 6, 2] == 0).all()  # both components zeroed
    assert flow_f[0, 7, 7] == -2000.0 and flow[3, 4, 1] != 0
    found = nonfinite_ground_truth(flow_f, valid_f)
    assert found.dtype == torch.bool and found.nonzero().tolist() == [[3, 4], [6, 2]]
    assert not nonfinite_ground_truth(flow_h, valid_h).any()
    batched = nonfinite_ground_truth(torch.stack([flow_f, flow_h]), torch.stack([valid_f, valid_h]))
    assert torch.equal(batched[0], found) and not batched[1].any()
    raw = torch.from_numpy(flow).permute(2, 0, 1)  # NaN still in the tensor: found too
    assert nonfinite_ground_truth(raw, valid_f).nonzero().tolist() == [[3, 4], [6, 2]]


@pytest.mark.parametrize(
    "stored, face",
    [
        (np.float32(0.99), True),
        (np.float64(0.2), False),
        (np.float32(0.5), False),
        (np.uint16(256), True),
        (np.int32(-1), True),
        (np.uint8(0), False),
        (True, True),
    ],
    ids=["soft-0.99", "soft-0.2", "soft-0.5", "uint16-256", "int-negative", "uint8-0", "bool"],
)
def test_mask_values_are_binarised_by_dtype(damaged_root: Path, stored, face: bool) -> None:
    mask = np.zeros((128, 128), np.asarray(stored).dtype)
    mask[10:20, 30:50] = stored
    np.save(damaged_root / "mask" / SEQ / "0001.npy", mask)
    loaded = FacialFlow(split="train", dataset_root=damaged_root)[0][6]
    assert loaded.dtype == torch.float32 and set(loaded.unique().tolist()) <= {0.0, 1.0}
    assert loaded.sum() == (200 if face else 0)
    assert loaded[10:20, 30:50].eq(1.0 if face else 0.0).all()


def test_unreadable_masks_name_the_file(damaged_root: Path) -> None:
    path = damaged_root / "mask" / SEQ / "0001.npy"
    np.save(path, np.array([{"face": 1}], dtype=object), allow_pickle=True)
    ds = FacialFlow(split="train", dataset_root=damaged_root)
    with pytest.raises(ValueError, match="a .npy array of Python objects") as info:
        ds[0]
    assert str(path) in str(info.value)
    np.save(path, np.zeros((128, 128), complex))
    with pytest.raises(ValueError, match="mask dtype complex128 is not bool, integer or float") as info:
        ds[0]
    assert str(path) in str(info.value)


def test_mask_for_last_frame_is_optional(damaged_root: Path) -> None:
    (damaged_root / "mask" / SEQ / "0003.npy").unlink()
    assert len(FacialFlow(split="train", dataset_root=damaged_root)) == 4


def test_labels_without_frames_are_reported(damaged_root: Path) -> None:
    shutil.rmtree(damaged_root / "image" / "facial" / SEQ)
    with pytest.raises(ValueError, match="no frame folder"):
        FacialFlow(split="train", dataset_root=damaged_root)


def test_missing_or_empty_split_shows_layout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist(.|\n)*expected FacialFlowNet layout"):
        FacialFlow(split="train", dataset_root=tmp_path)
    (tmp_path / "image" / "facial" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no <emotion>/<subject> sequences(.|\n)*mask/train"):
        FacialFlow(split="train", dataset_root=tmp_path)


def test_mask_shape_mismatch_names_the_file(damaged_root: Path) -> None:
    np.save(damaged_root / "mask" / SEQ / "0001.npy", np.zeros((64, 64), bool))
    ds = FacialFlow(split="train", dataset_root=damaged_root)
    with pytest.raises(ValueError, match="0001.npy"):
        ds[0]


def _seeded(fn, seed: int):
    np.random.seed(seed)
    torch.manual_seed(seed)
    return fn()


def test_augmentation_keeps_facial_and_head_samples_self_consistent(synthetic_root: Path) -> None:
    """Augmented frame 2 warped by the augmented flow matches augmented frame 1 on the augmented mask."""
    aug = FacialFlowAugmentor((96, 96), min_scale=-0.2, max_scale=0.6, eraser_prob=0.0, asymmetric_color_prob=0.0)
    rel = Path("train") / "happy" / "subject002"
    read = flow_io.read_image
    facial = [read(synthetic_root / "image" / "facial" / rel / n) for n in ("0001.jpg", "0002.jpg")]
    head = [read(synthetic_root / "image" / "head" / rel / n) for n in ("0001.jpg", "0002.jpg")]
    flow_f = flow_io.read_flo(synthetic_root / "flow" / "facial" / rel / "0001.flo")
    flow_h = flow_io.read_flo(synthetic_root / "flow" / "head" / rel / "0001.flo")
    mask = np.load(synthetic_root / "mask" / rel / "0001.npy").astype(np.uint8)

    ratios = []
    for seed in range(6):
        f1, f2, af, ah, am = _seeded(lambda: aug(facial[0], facial[1], flow_f, flow_h, mask), seed)
        h1, h2, af2, ah2, am2 = _seeded(lambda: aug(head[0], head[1], flow_f, flow_h, mask), seed)
        np.testing.assert_array_equal(af, af2)  # same seed, same geometry
        assert f1.shape == (96, 96, 3) and af.shape == ah.shape == (96, 96, 2) and am.shape == (96, 96)
        assert set(np.unique(am)) <= {0, 1}
        face = synthetic.erode(am.astype(bool), 2)
        assert face.sum() > 200
        for a, b, flow in ((f1, f2, af), (h1, h2, ah)):
            err = synthetic.warp_error(a, b, flow, face)
            zero = synthetic.warp_error(a, b, np.zeros_like(flow), face)
            assert err < 3.0 and err < zero, (seed, err, zero)
            ratios.append(err / zero)
    assert np.mean(ratios) < 0.4


def test_augmentation_negates_flow_on_flips() -> None:
    flow = np.zeros((120, 120, 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, 3.0
    img = np.zeros((120, 120, 3), np.uint8)
    aug = FacialFlowAugmentor((64, 64), spatial_prob=0.0, eraser_prob=0.0)
    aug.h_flip_prob, aug.v_flip_prob = 1.0, 1.0
    _, _, out, _, _ = aug(img, img, flow, flow, np.zeros((120, 120), np.uint8))
    np.testing.assert_array_equal(out[..., 0], -2.0)
    np.testing.assert_array_equal(out[..., 1], -3.0)


def test_dataset_augmentation_returns_crops(synthetic_root: Path) -> None:
    params = {"crop_size": [96, 80], "min_scale": -0.2, "max_scale": 0.6, "do_flip": True}
    ds = FacialFlow(params, split="train", dataset_root=synthetic_root)
    sample = _seeded(lambda: ds[2], 0)
    assert [tuple(t.shape) for t in sample] == [(3, 96, 80)] * 2 + [(2, 96, 80)] * 2 + [(96, 80)] * 3
    assert set(sample[6].unique().tolist()) <= {0.0, 1.0}


def _loader(root, *, stage="facialflow", batch_size=2, num_workers=0):
    return build_train_loader(
        stage=stage,
        image_size=(96, 96),
        root=root,
        per_process_batch=batch_size,
        seed=0,
        num_workers=num_workers,
        rank=0,
        world_size=1,
        start_step=0,
    )


def test_training_loader(synthetic_root: Path) -> None:
    loader = _loader(str(synthetic_root))
    assert loader.drop_last and loader.batch_size == 2 and len(loader) == 2
    batch = next(iter(loader))
    assert tuple(batch[0].shape) == (2, 3, 96, 96) and tuple(batch[6].shape) == (2, 96, 96)

    assert default_num_workers() == min(torch.multiprocessing.cpu_count(), 8)
    with pytest.raises(ValueError, match="unknown training stage"):
        _loader(str(synthetic_root), stage="chairs")
    with pytest.raises(ValueError, match="fewer than the batch size"):
        _loader(str(synthetic_root), batch_size=64)


def test_seed_worker_derives_numpy_and_random_seeds_from_torch() -> None:
    draws = []
    for torch_seed in (5, 5, 6):  # DataLoader gives each worker torch seed base_seed + worker_id
        torch.manual_seed(torch_seed)
        seed_worker(0)
        draws.append((np.random.rand(), random.random()))
    assert draws[0] == draws[1] and draws[0] != draws[2]
