"""The synthetic micro-expression corpus end to end through `python -m core.mer` (issue 38, item 7):
ground-truth expression flow classifies (UF1 >= 0.9); zero flow and shuffled labels give chance; under
strong head motion the ground-truth facial flow scores far below the expression flow (the paper's argument,
on data whose truth is known).

Size, chosen for CI (all of it in well under 90 s on 2 cores): 6 subjects x 6 clips (each subject balanced
over the 3 classes), 96x96 frames, head motion twice the default, STSTNet for 300 epochs per fold (each
epoch one batch: 1 Adam step at lr 5e-5). Measured on corpus seeds 0 and 1: gt-expression UF1 1.0 at 300
and 400 epochs (0.94 at 200), gt-facial 0.31-0.41; zero flow and shuffled labels 0.16-0.26. Training runs
on one thread: on a 2-core machine shared with other processes, PyTorch's two threads made the small
STSTNet steps 4-10x slower than one (the results are the same).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from core.mer.cli import main
from core.mer.corpora import read_canonical, write_canonical
from core.mer.synthetic import write_synthetic_corpus

SUBJECTS = 6
CLIPS_PER_SUBJECT = 6
FRAME_SIDE = 96
HEAD_MOTION = 2.0  # strong head motion: twice the default
EPOCHS = 300
ZERO_FLOW_EPOCHS = 20  # every input is the same zeros: no number of epochs tells the classes apart
CHANCE_UF1 = 0.5  # above chance (1/3 for balanced classes; 1/6 for one class predicted) with margin


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mer-e2e") / "synthetic"
    return write_synthetic_corpus(
        root, subjects=SUBJECTS, clips_per_subject=CLIPS_PER_SUBJECT, size=FRAME_SIDE, head_motion=HEAD_MOTION
    )


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scores(output: Path, method: str) -> dict:
    return json.loads((output / f"{method}-28-megc2019" / "scores.json").read_text())["composite"]


def run(csv: Path, output: Path, flow: str) -> None:
    main(["run", "--dataset", f"synthetic={csv}", "--flow", flow, "--output", str(output), "--epochs", str(EPOCHS)])


def test_expression_flow_classifies_and_facial_flow_under_head_motion_does_not(corpus, tmp_path):
    run(corpus, tmp_path, "gt")
    run(corpus, tmp_path, "gt-facial")
    expression, facial = scores(tmp_path, "gt-expression"), scores(tmp_path, "gt-facial")
    assert expression["n"] == facial["n"] == SUBJECTS * CLIPS_PER_SUBJECT
    assert expression["uf1"] >= 0.9
    assert facial["uf1"] < expression["uf1"] - 0.3


def test_zero_flow_gives_chance(corpus, tmp_path):
    flows = tmp_path / "zeros"
    for clip in read_canonical(corpus):
        (flows / clip.dataset / clip.subject).mkdir(parents=True, exist_ok=True)
        np.save(flows / clip.dataset / clip.subject / f"{clip.clip}.npy", np.zeros((16, 16, 2), np.float32))
    arguments = ["--dataset", f"synthetic={corpus}", "--flow", f"files:{flows}", "--output", str(tmp_path)]
    main(["extract", *arguments])
    main(["evaluate", *arguments, "--epochs", str(ZERO_FLOW_EPOCHS)])
    assert scores(tmp_path, "files-zeros")["uf1"] < CHANCE_UF1


def test_shuffled_labels_give_chance(corpus, tmp_path):
    clips = read_canonical(corpus)
    labels = np.random.default_rng(0).permutation([clip.label for clip in clips])
    shuffled = corpus.with_name("shuffled.csv")  # beside the frames: their paths stay relative
    write_canonical(shuffled, [replace(clip, label=str(label)) for clip, label in zip(clips, labels)], cropped=True)
    run(shuffled, tmp_path, "gt")
    assert scores(tmp_path, "gt-expression")["uf1"] < CHANCE_UF1
