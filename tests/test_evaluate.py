"""evaluate.py: metrics, JSON schema, baselines and errors on a generated dataset.

The masked metrics are checked against an independent numpy computation from the .flo
files that get_flow.py writes for the same pairs (128x128 frames: no padding, so the
"exp" padding of evaluate.py and the "symmetric" one of get_flow.py agree).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
import get_flow
from core import evaluation, inference
from core import weights as weights_module
from core.checkpoint import load_checkpoint, save_checkpoint
from core.datasets import FacialFlow
from core.network import DecFlow
from core.utils.flow_io import read_flo, write_flo
from tests.model_helpers import bf16_tolerance

REPO = Path(__file__).resolve().parents[1]
ITERS = 2
TOP_KEYS = {"dataset", "split", "pairs", "iters", "facial", "head", "expression", "ffn_protocol", "per_emotion", "meta"}
META_KEYS = {"checkpoint", "checkpoint_sha256", "iters", "padding_mode", "precision", "device", "torch_version"}


def run_evaluate(*argv: str) -> dict:
    args = evaluate.get_args_parser().parse_args([*argv, "--no_progress", "--device", "cpu"])
    return evaluate.main(args)


def numpy_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    epe = np.sqrt(((pred.astype(np.float64) - gt) ** 2).sum(axis=2))[mask]
    return {"epe": epe.mean(), "1px": (epe < 1).mean(), "3px": (epe < 3).mean(), "5px": (epe < 5).mean()}


def numpy_ffn(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    epe = np.sqrt(((pred.astype(np.float64) - gt) ** 2).sum(axis=2))
    n = mask.sum()
    return {"epe": epe.sum() / n, "1px": (epe < 1).sum() / n, "3px": (epe < 3).sum() / n, "5px": (epe < 5).sum() / n}


def mean_of(blocks: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([b[k] for b in blocks])) for k in evaluation.METRIC_KEYS}


def assert_block_close(actual: dict, expected: dict, tol: float = 1e-4) -> None:
    assert set(actual) == set(evaluation.METRIC_KEYS)
    for key in evaluation.METRIC_KEYS:
        assert actual[key] == pytest.approx(expected[key], rel=tol, abs=tol), key


# ------------------------------------------------------------------ unit: metric definitions
def test_metric_definitions_by_hand() -> None:
    gt = torch.zeros(2, 2, 3)
    pred = torch.zeros(2, 2, 3)
    pred[0] = torch.tensor([[0.5, 2.0, 4.0], [6.0, 0.0, 10.0]])  # EPE = |x error|
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.uint8)
    masked = evaluation.masked_metrics(pred, gt, mask)
    assert masked == pytest.approx({"epe": 6.5 / 3, "1px": 1 / 3, "3px": 2 / 3, "5px": 1.0})
    ffn = evaluation.ffn_protocol_metrics(pred, gt, mask)
    # whole image: EPE sum 22.5, pixels under 1/3/5 px: 2/3/4, over 3 mask pixels
    assert ffn == pytest.approx({"epe": 22.5 / 3, "1px": 2 / 3, "3px": 1.0, "5px": 4 / 3})
    empty = torch.zeros(2, 3)
    assert evaluation.masked_metrics(pred, gt, empty) is None
    assert evaluation.ffn_protocol_metrics(pred, gt, empty) is None


def test_empty_masks_are_counted_and_skipped() -> None:
    zeros = torch.zeros(2, 8, 8)
    full, empty = torch.ones(8, 8), torch.zeros(8, 8)
    gt = torch.ones(2, 8, 8)
    dataset = [(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8), gt, gt, full, full, mask) for mask in (full, empty)]
    results = evaluation.evaluate_predictor(lambda a, b: (zeros.expand(len(a), -1, -1, -1),) * 2, dataset)
    assert results["pairs"] == 2 and results["pairs_without_mask"] == 1
    assert results["facial"]["epe"] == pytest.approx(math.sqrt(2))
    assert results["per_emotion"]["all"]["pairs"] == 2


# ------------------------------------------------------------------ the script
def test_cli_json_schema(synthetic_root: Path, decflow_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "results" / "decflow.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "evaluate.py"),
            "--model",
            str(decflow_checkpoint),
            "--dataset",
            "facialflow",
            "--root",
            str(synthetic_root),
            "--iters",
            str(ITERS),
            "--device",
            "cpu",
            "--output_json",
            str(out),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ffn_protocol" in proc.stdout and "expression" in proc.stdout
    doc = json.loads(out.read_text())
    assert set(doc) == TOP_KEYS
    assert (doc["dataset"], doc["split"], doc["pairs"], doc["iters"]) == ("facialflow", "test", 4, ITERS)
    for kind in ("facial", "head", "expression", "ffn_protocol"):
        assert set(doc[kind]) == set(evaluation.METRIC_KEYS)
        assert all(math.isfinite(v) for v in doc[kind].values())
        assert 0.0 <= doc[kind]["1px"] <= doc[kind]["3px"] <= doc[kind]["5px"]
    assert set(doc["per_emotion"]) == {"angry", "happy"}  # subjects 0, 1 of the generator
    for block in doc["per_emotion"].values():
        assert block["pairs"] == 2
        assert set(block) == {"pairs", "facial", "head", "expression", "ffn_protocol"}
    meta = doc["meta"]
    assert META_KEYS <= set(meta)
    assert meta["checkpoint_sha256"] == hashlib.sha256(decflow_checkpoint.read_bytes()).hexdigest()
    assert (meta["iters"], meta["padding_mode"], meta["precision"], meta["device"]) == (ITERS, "exp", "float32", "cpu")
    assert meta["torch_version"] == torch.__version__


def test_the_checkpoint_is_hashed_once(synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading verifies the file against the SHA-256 in its .json, and the meta reports it: one read."""
    weights = tmp_path / "described.pth"
    save_checkpoint(DecFlow(), weights, description={"step": 0})  # the .json train.py writes, with the SHA-256
    hashed = []

    def counting(digest, path):
        hashed.append(Path(path).resolve())
        return real_hash_file(digest, path)

    real_hash_file = weights_module.hash_file
    monkeypatch.setattr(weights_module, "hash_file", counting)
    argv = ("--root", str(synthetic_root), "--iters", "1", "--max_pairs", "1")
    doc = run_evaluate("--model", str(weights), *argv)
    assert hashed == [weights.resolve()]
    assert doc["meta"]["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    # a file changed after its .json was written is still refused: the one digest is the one compared
    with weights.open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(SystemExit, match="SHA-256 differs"):
        run_evaluate("--model", str(weights), *argv)


def test_masked_metrics_match_numpy_from_get_flow(
    synthetic_root: Path, decflow_checkpoint: Path, tmp_path: Path
) -> None:
    """evaluate.py's metrics against numpy on get_flow's written flows for every test pair (about 10 s:
    one get_flow run per pair)."""
    doc = run_evaluate(
        "--model", str(decflow_checkpoint), "--root", str(synthetic_root), "--iters", str(ITERS), "--no-mixed_precision"
    )
    dataset = FacialFlow(None, split="test", dataset_root=synthetic_root)
    blocks: dict[str, dict[str, list]] = {}
    for frames, flow_facial, flow_head, mask_path, info in zip(
        dataset.image_list, dataset.flow_facial_list, dataset.flow_head_list, dataset.mask_list, dataset.extra_info
    ):
        out = tmp_path / info.emotion / info.subject / frames[0].stem  # one folder per pair
        get_flow.main(
            get_flow.get_args_parser().parse_args(
                [
                    "--model",
                    str(decflow_checkpoint),
                    "--image1",
                    str(frames[0]),
                    "--image2",
                    str(frames[1]),
                    "--iters",
                    str(ITERS),
                    "--device",
                    "cpu",
                    "--no-mixed_precision",
                    "--save_flo",
                    "--output",
                    str(out),
                ]
            )
        )
        written = {kind: sorted(out.glob(f"*_{kind}.flo")) for kind in ("facial", "head", "expression")}
        assert all(len(paths) == 1 for paths in written.values()), written
        facial, head = read_flo(written["facial"][0]), read_flo(written["head"][0])
        np.testing.assert_allclose(read_flo(written["expression"][0]), facial - head, atol=1e-5)
        gt_f, gt_h = read_flo(flow_facial).astype(np.float64), read_flo(flow_head).astype(np.float64)
        mask = np.load(mask_path).astype(bool)
        pair = {
            "facial": numpy_metrics(facial, gt_f, mask),
            "head": numpy_metrics(head, gt_h, mask),
            "expression": numpy_metrics(facial - head, gt_f - gt_h, mask),
            "ffn_protocol": numpy_ffn(facial, gt_f, mask),
        }
        for group in ("all", info.emotion):
            for kind, value in pair.items():
                blocks.setdefault(group, {}).setdefault(kind, []).append(value)
    for kind in ("facial", "head", "expression", "ffn_protocol"):
        assert_block_close(doc[kind], mean_of(blocks["all"][kind]))
        for emotion in ("angry", "happy"):
            assert_block_close(doc["per_emotion"][emotion][kind], mean_of(blocks[emotion][kind]))


def test_baselines(synthetic_root: Path, tmp_path: Path) -> None:
    dataset = FacialFlow(None, split="test", dataset_root=synthetic_root)
    magnitude = {"facial": [], "head": [], "expression": []}
    for flow_facial, flow_head, mask_path in zip(dataset.flow_facial_list, dataset.flow_head_list, dataset.mask_list):
        mask = np.load(mask_path).astype(bool)
        gt_f, gt_h = read_flo(flow_facial).astype(np.float64), read_flo(flow_head).astype(np.float64)
        for kind, flow in (("facial", gt_f), ("head", gt_h), ("expression", gt_f - gt_h)):
            magnitude[kind].append(np.sqrt((flow**2).sum(axis=2))[mask].mean())

    zero = run_evaluate("--method", "zero", "--root", str(synthetic_root), "--output_json", str(tmp_path / "z.json"))
    assert json.loads((tmp_path / "z.json").read_text()) == json.loads(json.dumps(zero))
    for kind in ("facial", "head", "expression"):
        assert zero[kind]["epe"] == pytest.approx(np.mean(magnitude[kind]), rel=1e-5)
    assert zero["iters"] is None and zero["meta"]["checkpoint"] is None

    for method in ("dis", "farneback"):
        doc = run_evaluate("--method", method, "--root", str(synthetic_root), "--split", "val", "--max_pairs", "3")
        assert set(doc) == TOP_KEYS and doc["pairs"] == 3 and doc["split"] == "val"
        assert doc["head"] is None and doc["expression"] is None  # not applicable
        assert all(block["head"] is None for block in doc["per_emotion"].values())
        assert all(math.isfinite(v) for v in doc["facial"].values())
        assert math.isfinite(doc["ffn_protocol"]["epe"])
    dis = run_evaluate("--method", "dis", "--root", str(synthetic_root))
    assert dis["facial"]["epe"] < zero["facial"]["epe"]  # the synthetic motion is recoverable


def test_evaluate_facialflow_in_process(synthetic_root: Path, decflow_checkpoint: Path) -> None:
    """The function train.py calls: restores the training mode, agrees with the script."""
    model = DecFlow()
    load_checkpoint(model, decflow_checkpoint, verbose=False)
    model.train()
    dataset = FacialFlow(None, split="test", dataset_root=synthetic_root)
    results = evaluation.evaluate_facialflow(model, dataset, iters=ITERS, max_pairs=1)
    assert model.training and results["pairs"] == 1
    assert results["facial"]["epe"] > 0 and results["ffn_protocol"]["epe"] > 0
    script = run_evaluate(
        "--model", str(decflow_checkpoint), "--root", str(synthetic_root), "--iters", str(ITERS), "--max_pairs", "1"
    )
    assert_block_close(results["facial"], script["facial"], tol=1e-5)


def test_batch_size_gives_the_metrics_of_one_pair_at_a_time(synthetic_root: Path, decflow_checkpoint: Path) -> None:
    """--batch_size 3 on the 4 test pairs (a batch of 3, then 1): every number as at batch 1 (float32)."""
    common = (
        "--model",
        str(decflow_checkpoint),
        "--root",
        str(synthetic_root),
        "--iters",
        str(ITERS),
        "--no-mixed_precision",
    )
    single, batched = run_evaluate(*common), run_evaluate(*common, "--batch_size", "3")
    assert batched["pairs"] == single["pairs"] == 4
    for kind in ("facial", "head", "expression", "ffn_protocol"):
        assert_block_close(batched[kind], single[kind], tol=1e-5)
    assert batched["per_emotion"].keys() == single["per_emotion"].keys()
    for emotion, block in single["per_emotion"].items():
        assert_block_close(batched["per_emotion"][emotion]["facial"], block["facial"], tol=1e-5)


def test_batches_hold_pairs_of_one_size() -> None:
    """Consecutive pairs of another size start a new batch; the predictor sees [B, 3, H, W]."""
    shapes = [(8, 8), (8, 8), (16, 8), (8, 8)]
    dataset = [
        (
            torch.zeros(3, *s),
            torch.zeros(3, *s),
            torch.ones(2, *s),
            torch.ones(2, *s),
            torch.ones(*s),
            torch.ones(*s),
            torch.ones(*s),
        )
        for s in shapes
    ]
    seen = []

    def zero(image1: torch.Tensor, image2: torch.Tensor):
        seen.append(tuple(image1.shape))
        return (torch.zeros(image1.shape[0], 2, *image1.shape[-2:]),) * 2

    results = evaluation.evaluate_predictor(zero, dataset, batch_size=3)
    assert seen == [(2, 3, 8, 8), (1, 3, 16, 8), (1, 3, 8, 8)]
    assert results["pairs"] == 4 and results["facial"]["epe"] == pytest.approx(math.sqrt(2))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        evaluation.evaluate_predictor(zero, dataset, batch_size=0)


# ------------------------------------------------------------------ user errors: one line, no traceback
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "missing.pth"], "checkpoint missing.pth not found"),
        ([], "no weights: neither checkpoints/decflow-facialflownet.pth (the release) nor checkpoints/decflow.pth"),
        (["--method", "zero", "--root", "{tmp}/nowhere"], "dataset folder"),
        (["--method", "zero", "--root", "{tmp}", "--split", "val"], "split 'val' not found"),
        (["--method", "zero", "--iters", "0"], "--iters must be >= 1"),
        (["--method", "zero", "--batch_size", "0"], "--batch_size must be >= 1"),
    ],
)
def test_user_errors(argv: list[str], message: str, synthetic_root: Path, tmp_path: Path) -> None:
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--root" not in argv:
        argv += ["--root", str(synthetic_root)]
    with pytest.raises(SystemExit) as error:
        run_evaluate(*argv)
    first = str(error.value).splitlines()[0]  # a command to run, if any, on the next line
    assert message in first and len(first) < 200 and first.startswith("evaluate.py: error:")


def test_user_error_from_the_script(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), "--model", "nope.pth", "--root", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "evaluate.py: error:" in proc.stderr


def test_bad_checkpoint_is_one_line(synthetic_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"module.nothing": torch.zeros(1)}, bad)
    with pytest.raises(SystemExit) as error:
        run_evaluate("--model", str(bad), "--root", str(synthetic_root))
    assert "bad.pth" in str(error.value) and "\n" not in str(error.value)


def test_mismatched_model_options_are_a_one_line_error(synthetic_root: Path, tmp_path: Path) -> None:
    """train.py's .json beside the weights says which attention mode they were trained in."""
    weights = tmp_path / "content.pth"
    save_checkpoint(DecFlow(), weights, description={"step": 1})
    with pytest.raises(SystemExit) as error:
        run_evaluate("--model", str(weights), "--root", str(synthetic_root), "--position_and_content")
    assert str(error.value) == (
        f"evaluate.py: error: {weights} was trained with position_and_content=False (see "
        f"{tmp_path / 'content.json'}), but the model options give position_and_content=True"
    )


# Measured relative deviation of the facial EPE, bf16 autocast with --alternate_corr against
# float32 (2 iterations, 1 pair): 0.00099 (AMD EPYC, AVX2, bf16 emulated; head 4e-5, expression 7e-4).
MEASURED_BF16_EPE = 0.00099


def test_mixed_precision_is_recorded_and_close_to_float32(synthetic_root: Path, decflow_checkpoint: Path) -> None:
    """bf16 autocast (asked for explicitly, so on any CPU) with the memory-bounded correlation:
    recorded in meta, within bf16's rounding of float32, and not float32 itself."""
    common = ("--model", str(decflow_checkpoint), "--root", str(synthetic_root), "--iters", str(ITERS))
    reference = run_evaluate(*common, "--max_pairs", "1")
    doc = run_evaluate(*common, "--max_pairs", "1", "--mixed_precision", "--amp_dtype", "bfloat16", "--alternate_corr")
    assert doc["meta"]["precision"] == "bfloat16 autocast"
    assert doc["meta"]["model_options"]["alternate_corr"] is True
    for kind in ("facial", "expression"):
        assert doc[kind]["epe"] == pytest.approx(reference[kind]["epe"], rel=bf16_tolerance(MEASURED_BF16_EPE)), kind
    assert doc["facial"]["epe"] != reference["facial"]["epe"]  # bf16 really ran


@pytest.mark.parametrize("alternate", [False, True])
def test_alternate_corr_reaches_the_model_and_meta_says_what_ran(
    synthetic_root: Path, decflow_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, alternate: bool
) -> None:
    """`--alternate_corr` (bit for bit the same flow in float32, so observed on the model's
    forward): every forward evaluate.py runs gets it, and meta records the estimator's options,
    padding and precision, not the command line's."""
    calls: list[dict] = []
    padders: list[str] = []
    estimate, padder = DecFlow.forward_unchecked, inference.InputPadder

    def recording_estimate(self: DecFlow, *args, **kwargs):
        calls.append({"alternate_corr": kwargs.get("alternate_corr", False), "amp_dtype": kwargs.get("amp_dtype")})
        return estimate(self, *args, **kwargs)

    def recording_padder(*args, **kwargs):
        padders.append(kwargs["mode"])
        return padder(*args, **kwargs)

    monkeypatch.setattr(DecFlow, "forward_unchecked", recording_estimate)
    monkeypatch.setattr(inference, "InputPadder", recording_padder)
    flag = ("--alternate_corr",) if alternate else ()
    doc = run_evaluate(
        "--model", str(decflow_checkpoint), "--root", str(synthetic_root), "--iters", "1", "--max_pairs", "2", *flag
    )
    assert calls == [{"alternate_corr": alternate, "amp_dtype": None}] * 2
    assert padders == ["exp"] * 2
    meta = doc["meta"]
    assert meta["model_options"] == {
        "num_heads": 1,
        "position_only": False,
        "position_and_content": False,
        "alternate_corr": alternate,
    }
    assert (meta["padding_mode"], meta["precision"], meta["iters"]) == ("exp", "float32", 1)


def test_subset_keeps_emotions_and_counts(synthetic_root: Path) -> None:
    """train.py validates on torch Subsets: emotions still come from the underlying dataset."""
    dataset = FacialFlow(None, split="test", dataset_root=synthetic_root)
    subset = torch.utils.data.Subset(dataset, [3, 0])
    results = evaluation.evaluate_predictor(evaluation.ZeroFlowPredictor(), subset)
    assert set(results["per_emotion"]) == {dataset.extra_info[3].emotion, dataset.extra_info[0].emotion}
    assert results["scored_pairs"] == {"facial": 2, "head": 2, "expression": 2, "ffn_protocol": 2}
    baseline = evaluation.evaluate_predictor(evaluation.OpenCVFlowPredictor("dis"), subset, has_head=False)
    assert baseline["head"] is None
    assert baseline["scored_pairs"] == {"facial": 2, "head": 0, "expression": 0, "ffn_protocol": 2}


# ------------------------------------------------------------------ bad ground truth, bad output paths
def test_ffn_protocol_leaves_out_unscored_pixels_by_hand() -> None:
    gt = torch.zeros(2, 2, 3)
    pred = torch.zeros(2, 2, 3)
    pred[0] = torch.tensor([[0.5, 2.0, 4.0], [6.0, 0.0, 10.0]])
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]], dtype=torch.uint8)
    scored = torch.tensor([[True, False, True], [True, True, False]])
    # scored whole-image EPE: 0.5 + 4 + 6 + 0 = 10.5; under 1/3/5 px: 2/2/3; scored mask pixels: 2
    ffn = evaluation.ffn_protocol_metrics(pred, gt, mask, scored=scored)
    assert ffn == pytest.approx({"epe": 10.5 / 2, "1px": 1.0, "3px": 1.0, "5px": 1.5})
    assert evaluation.ffn_protocol_metrics(pred, gt, mask, scored=torch.tensor([[False] * 3, [True] * 3])) is None


def test_raw_non_finite_ground_truth_is_left_out() -> None:
    """A FacialFlow-like dataset that hands over NaN itself: left out too, nothing becomes NaN."""
    gt = torch.ones(2, 4, 4)
    gt[:, 0, 0] = float("nan")
    gt[1, 3, 3] = float("inf")
    ones = torch.ones(4, 4)
    sample = (torch.zeros(3, 4, 4), torch.zeros(3, 4, 4), gt, torch.ones(2, 4, 4), ones, ones, ones)
    results = evaluation.evaluate_predictor(evaluation.ZeroFlowPredictor(), [sample])
    assert results["nonfinite_gt_pixels"] == {"facial": 2, "head": 0}
    assert results["facial"]["epe"] == pytest.approx(math.sqrt(2))
    assert results["ffn_protocol"]["epe"] == pytest.approx(math.sqrt(2))  # 14 pixels / 14 mask pixels
    assert results["expression"]["epe"] == pytest.approx(0.0)


def _poison(path: Path, rows: slice, cols: slice, value: float) -> None:
    flow = read_flo(path)
    flow[rows, cols, 0] = value
    write_flo(path, flow)


def test_non_finite_ground_truth_is_counted_reported_and_left_out(synthetic_dataset, tmp_path: Path, capsys) -> None:
    root = synthetic_dataset.copy(
        tmp_path / "FacialFlowNet", subjects=2, frames=3, size=(64, 64), seed=5, splits=("test",)
    )
    dataset = FacialFlow(None, split="test", dataset_root=root)
    patch = dataset.flow_facial_list[0]
    _poison(patch, slice(20, 30), slice(10, 40), float("nan"))  # a NaN patch over part of the face
    _poison(patch, slice(0, 2), slice(0, 3), float("inf"))  # and inf outside it
    _poison(dataset.flow_facial_list[2], slice(None), slice(None), float("nan"))  # a pair with no finite gt
    out = tmp_path / "zero.json"
    doc = run_evaluate("--method", "zero", "--root", str(root), "--output_json", str(out))
    printed = capsys.readouterr().out

    per_pair: dict[str, list] = {"facial": [], "head": [], "expression": [], "ffn_protocol": []}
    for flow_facial, flow_head, mask_path in zip(dataset.flow_facial_list, dataset.flow_head_list, dataset.mask_list):
        gt_f, gt_h = read_flo(flow_facial).astype(np.float64), read_flo(flow_head).astype(np.float64)
        finite = np.isfinite(gt_f).all(axis=2)
        mask = np.load(mask_path).astype(bool)
        zero = np.zeros_like(gt_f)
        per_pair["head"].append(numpy_metrics(zero, gt_h, mask))
        if (mask & finite).any():
            per_pair["facial"].append(numpy_metrics(zero, gt_f, mask & finite))
            per_pair["expression"].append(numpy_metrics(zero, gt_f - gt_h, mask & finite))
            ffn = numpy_ffn(zero[finite][None], gt_f[finite][None], (mask & finite)[finite][None])
            per_pair["ffn_protocol"].append(ffn)
    assert len(per_pair["facial"]) == 3 and len(per_pair["head"]) == 4
    for kind, blocks in per_pair.items():
        assert_block_close(doc[kind], mean_of(blocks))
    meta = json.loads(out.read_text())["meta"]
    assert meta["nonfinite_gt_pixels"] == {"facial": 10 * 30 + 2 * 3 + 64 * 64, "head": 0}
    assert meta["scored_pairs"] == {"facial": 3, "head": 4, "expression": 3, "ffn_protocol": 3}
    assert "4 pairs (scored: facial 3, expression 3, ffn_protocol 3)" in printed
    assert printed.count("not finite") == 1 and f"at {10 * 30 + 2 * 3 + 64 * 64} facial and 0 head" in printed


@pytest.mark.parametrize(
    "target, message",
    [
        ("{tmp}", "--output_json {tmp} is a directory"),
        ("{tmp}/file.txt/results.json", "--output_json {tmp}/file.txt/results.json: {tmp}/file.txt is a file"),
        ("{tmp}/file.txt/more/results.json", "{tmp}/file.txt is a file, not a folder"),
    ],
)
def test_bad_output_json_fails_before_any_work(tmp_path: Path, target: str, message: str) -> None:
    (tmp_path / "file.txt").write_text("x")
    # the dataset folder does not exist: only a check made before reading it can name --output_json
    with pytest.raises(SystemExit) as error:
        run_evaluate(
            "--method", "zero", "--root", str(tmp_path / "nowhere"), "--output_json", target.format(tmp=tmp_path)
        )
    text = str(error.value)
    assert text.startswith("evaluate.py: error:") and "\n" not in text
    assert message.format(tmp=tmp_path) in text


def test_output_json_folders_are_created(synthetic_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "zero.json"
    run_evaluate("--method", "zero", "--root", str(synthetic_root), "--max_pairs", "1", "--output_json", str(out))
    assert json.loads(out.read_text())["pairs"] == 1


def test_no_progress_has_both_spellings() -> None:
    parser = evaluate.get_args_parser()
    assert parser.parse_args(["--no-progress"]).no_progress and parser.parse_args(["--no_progress"]).no_progress
    assert not parser.parse_args([]).no_progress
