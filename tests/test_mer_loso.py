"""Leave-one-subject-out training: isolation of the held-out subject, folds at once = one at a time, seeds."""

import dataclasses

import pytest
import torch
from tqdm import tqdm

from core.errors import UserError
from core.mer.loso import (
    DropoutDraws,
    TrainConfig,
    fold_chunks,
    intra_op_threads,
    make_folds,
    train_fold,
    train_folds_at_once,
    train_loso,
    train_loso_seeds,
)
from core.mer.models import dropout_keep

SIZE = 8  # tiny inputs: STSTNet's pooled maps are then 2x2
# a few steps with a large learning rate; batches of 7 leave ragged last batches (folds differ in size)
TINY = TrainConfig(epochs=3, lr=0.01, batch_size=7, folds_at_once=3)


def tiny_data(seed: int, *, clips: tuple[int, ...] = (5, 4, 6, 3)) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Noise inputs `[N, 3, 8, 8]`, random targets of 3 classes, subjects of `clips` clips each."""
    generator = torch.Generator().manual_seed(seed)
    groups = [f"s{s}" for s, count in enumerate(clips) for _ in range(count)]
    inputs = torch.randn(len(groups), 3, SIZE, SIZE, generator=generator)
    return inputs, torch.randint(0, 3, (len(groups),), generator=generator), groups


def test_folds_at_once_equal_one_fold_at_a_time():
    """Without dropout (whose masks come from other draws in the per-fold path), the folded model's held-out
    logits and weights are those of STSTNet trained alone by torch.optim.Adam on the same batches."""
    inputs, targets, groups = tiny_data(0)
    config = dataclasses.replace(TINY, dropout=0.0)
    folds = make_folds(groups, seed=0)
    with tqdm(disable=True) as bar:
        folded = train_folds_at_once(inputs, targets, folds, num_classes=3, config=config, bar=bar)
    for fold, (state, logits) in zip(folds, folded, strict=True):
        model, expected = train_fold(inputs, targets, fold, num_classes=3, config=config)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_a_folds_model_does_not_depend_on_the_folds_beside_it():
    """With dropout: fold s2 trained alone gives the logits it gets inside the whole protocol."""
    inputs, targets, groups = tiny_data(1)
    result = train_loso(inputs, targets, groups, num_classes=3, config=TINY)
    fold = make_folds(groups, seed=TINY.seed)[2]
    with tqdm(disable=True) as bar:
        [(_, alone)] = train_folds_at_once(inputs, targets, [fold], num_classes=3, config=TINY, bar=bar)
    torch.testing.assert_close(result.logits[fold.test], alone, rtol=1e-4, atol=1e-5)


def test_chunks_trained_on_threads_equal_chunks_trained_in_turn():
    """Two threads each training its own chunk of folds (the CPU path when torch has 2 threads) give the
    logits and weights of the chunks trained one after the other on one thread."""
    inputs, targets, groups = tiny_data(2, clips=(5, 4, 6, 3, 4))
    config = dataclasses.replace(TINY, folds_at_once=2)
    with intra_op_threads(2):
        threaded = train_loso(inputs, targets, groups, num_classes=3, config=config)
    with intra_op_threads(1):
        in_turn = train_loso(inputs, targets, groups, num_classes=3, config=config)
    torch.testing.assert_close(threaded.logits, in_turn.logits, rtol=1e-4, atol=1e-5)
    for group, state in in_turn.states.items():
        for name, value in state.items():
            torch.testing.assert_close(threaded.states[group][name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("folds", "at_once", "workers", "sizes"),
    [(68, 17, 2, [17] * 4), (24, 17, 2, [12, 12]), (68, 17, 1, [17] * 4), (5, 17, 2, [2, 3]), (1, 17, 2, [1])],
)
def test_fold_chunks_are_even_and_a_multiple_of_the_workers(folds, at_once, workers, sizes):
    chunks = fold_chunks(list(range(folds)), at_once=at_once, workers=workers)
    assert [len(chunk) for chunk in chunks] == sizes
    assert [fold for chunk in chunks for fold in chunk] == list(range(folds))


def test_the_held_out_labels_never_reach_training():
    """Changing every label of subject s1 leaves its own fold's model and predictions bit for bit unchanged
    (and does change the other folds, which train on them)."""
    inputs, targets, groups = tiny_data(2)
    held_out = torch.tensor([group == "s1" for group in groups])
    altered = targets.clone()
    altered[held_out] = (targets[held_out] + 1) % 3
    before = train_loso(inputs, targets, groups, num_classes=3, config=TINY)
    after = train_loso(inputs, altered, groups, num_classes=3, config=TINY)
    assert torch.equal(before.logits[held_out], after.logits[held_out])
    for name, value in before.states["s1"].items():
        assert torch.equal(after.states["s1"][name], value), name
    assert not torch.equal(before.logits[~held_out], after.logits[~held_out])


def plant(inputs: torch.Tensor, targets: torch.Tensor, carriers: torch.Tensor, seed: int) -> torch.Tensor:
    """Channel 0 of the `carriers` clips holds their class (-3, 0 or 3); the other clips hold a random class there."""
    planted = inputs.clone()
    noise = torch.randint(0, 3, targets.shape, generator=torch.Generator().manual_seed(seed))
    code = torch.where(carriers, targets, noise)
    planted[:, 0] = 3.0 * (code - 1).float()[:, None, None]
    return planted


def test_a_shortcut_only_the_held_out_subject_carries_is_not_learnt():
    """Positive control: when every subject's clips carry their class in channel 0, LOSO learns it (accuracy
    near 1). When only the held-out subject carries it (the others a random class there), its fold scores
    near chance: nothing of the held-out subject reached training. A protocol that let the held-out clips
    into training (or chose the epoch by their accuracy) would score high here."""
    inputs, targets, groups = tiny_data(3, clips=(12, 12, 12))
    names = torch.tensor([int(group[1:]) for group in groups])
    config = TrainConfig(epochs=10, lr=0.05, batch_size=24, folds_at_once=3)
    everyone = train_loso(plant(inputs, targets, names >= 0, seed=4), targets, groups, num_classes=3, config=config)
    assert (everyone.predictions == targets).float().mean() >= 0.9
    correct = 0
    for subject in range(3):
        held_out = names == subject
        planted = plant(inputs, targets, held_out, seed=5 + subject)
        result = train_loso(planted, targets, groups, num_classes=3, config=config)
        correct += int((result.predictions[held_out] == targets[held_out]).sum())
    assert correct / len(targets) <= 0.5  # chance is 1/3 (36 clips)


def test_seeds_repeat_the_protocol_with_consecutive_seeds():
    inputs, targets, groups = tiny_data(6)
    config = dataclasses.replace(TINY, seed=3)
    results = train_loso_seeds(inputs, targets, groups, num_classes=3, config=config, seeds=2)
    assert [result.seed for result in results] == [3, 4]
    again = train_loso(inputs, targets, groups, num_classes=3, config=dataclasses.replace(TINY, seed=4))
    assert torch.equal(results[1].logits, again.logits)
    assert not torch.equal(results[0].logits, results[1].logits)
    assert results[0].groups == ["s0", "s1", "s2", "s3"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x, y, g: (x, y, ["s0"] * len(g)), "at least two subjects"),
        (lambda x, y, g: (x, y + 3, g), "targets must lie in [0, 3)"),
        (lambda x, y, g: (x[:, 0], y, g), "float32 [N, C, S, S]"),
        (lambda x, y, g: (x, y, g[:-1]), "as many long targets and groups"),
    ],
)
def test_bad_input_is_one_line(change, message):
    inputs, targets, groups = change(*tiny_data(7))
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train_loso(inputs, targets, groups, num_classes=3, config=TINY)


def test_an_unknown_classifier_is_named():
    with pytest.raises(UserError, match="unknown classifier 'nope'; known: ststnet"):
        train_loso(*tiny_data(8), num_classes=3, config=TrainConfig(model="nope"))


@pytest.mark.parametrize("change", [{"epochs": 0}, {"batch_size": 0}, {"dropout": 1.0}, {"lr": 0.0}])
def test_a_recipe_that_cannot_run_is_one_line(change):
    with pytest.raises(UserError, match="training needs epochs"):
        train_loso(*tiny_data(9), num_classes=3, config=dataclasses.replace(TINY, **change))


def test_dropout_keeps_each_value_with_probability_one_minus_p():
    """Kept values are 1 / (1 - p), about 1 - p of them (within 1 % on 120k draws); draws per fold, of its
    batch's size."""
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    mask = torch.arange(300)[:, None] < torch.tensor([300, 200, 0])  # [B, F]: fold 2 has no batch
    draws = DropoutDraws(generators, batch=300, side=5)(mask)
    assert [tuple(fold_draws.shape) for fold_draws in draws] == [(300, 5, 5, 16), (200, 5, 5, 16), (0, 5, 5, 16)]
    keep = dropout_keep(draws[0], 0.25)
    torch.testing.assert_close(keep.unique(), torch.tensor([0.0, 4 / 3]))
    assert abs((keep > 0).float().mean().item() - 0.75) < 0.01
