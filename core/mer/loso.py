"""Leave-one-subject-out (LOSO) training, leak-free by construction.

One model per held-out group (a subject: `Clip.group`), each trained from its own seeds for a number
of epochs fixed in advance, on the other groups' clips only; the held-out group's clips are then
predicted once, by the last epoch's model in eval mode. Nothing of the held-out group chooses
anything: its inputs and labels never enter a batch, a loss, a batch-norm statistic or an optimiser
step; there is no epoch selection, no threshold and no dataset-level normalisation (the inputs are
normalised per clip by the recipe, `core.mer.inputs`). There is no early stopping.

The recipe is STSTNet's public training code (christy1206/STSTNet, `main.py`): cross-entropy loss,
Adam (lr 5e-5, PyTorch's default betas (0.9, 0.999), eps 1e-8, no weight decay), batch 256,
800 epochs, dropout 0.5, the weights reset for every subject. Its DataLoader does *not* shuffle: its
batches follow the directory listing, grouped by class, so an epoch's first batch of 256 is mostly
the first classes. We shuffle every epoch with a seed by default (`TrainConfig.shuffle=False` keeps
the given clip order instead, as that code does).

Seeds: fold f's initial weights, its epoch orders and its dropout masks each come from a generator
seeded by (`TrainConfig.seed`, the held-out group's name), so a fold's model does not depend on which
other folds are trained beside it.

Speed: STSTNet's folds train together as one `FoldedSTSTNet` (`TrainConfig.folds_at_once` at a
time): each step, every fold takes the next batch of its own epoch order. On a CPU, torch's N threads
train N such chunks at once, one thread each (`train_chunks`). Other `MODELS` entries train one fold at
a time with the same recipe (`train_fold`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from core.errors import UserError
from core.mer import kernel
from core.mer.models import DROPOUT_LEVELS, FOLDED, MODELS, STREAMS, pool_side
from core.utils.progress import progress_bar

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which STSTNet's code keeps
ADAM_EPS = 1e-8


FoldResult = tuple[dict[str, torch.Tensor], torch.Tensor]  # a trained fold: its state dict, its test clips' logits


@dataclass(frozen=True)
class TrainConfig:
    """The training recipe (STSTNet's code's) and the seed; the speed knob changes no result."""

    model: str = "ststnet"  # a `core.mer.models.MODELS` name
    epochs: int = 800
    lr: float = 5e-5
    batch_size: int = 256
    dropout: float = 0.5
    seed: int = 0
    shuffle: bool = True  # STSTNet's code keeps the listing order (see the module's docstring)
    folds_at_once: int = 17  # at most this many folds trained together (speed only: equal to float rounding)
    compiled: bool = True  # STSTNet's training steps in the compiled CPU kernel, where it builds (speed only)


@dataclass
class LosoResult:
    """Pooled held-out predictions of one LOSO run: clip i was predicted by the model of its own group."""

    groups: list[str]  # the folds, sorted: one model per held-out group
    predictions: torch.Tensor  # [N] long, class indices
    logits: torch.Tensor  # [N, K] float32
    states: dict[str, dict[str, torch.Tensor]]  # group -> its model's state dict
    seed: int


@dataclass(frozen=True)
class Fold:
    """One held-out group: the clips it trains on and those it predicts, and its seeds."""

    group: str
    train: torch.Tensor  # [n_train] long, indices into the inputs (no clip of `group`)
    test: torch.Tensor  # [n_test] long, the clips of `group`
    init_seed: int
    order_seed: int
    dropout_seed: int


def make_folds(groups: Sequence[str], *, seed: int) -> list[Fold]:
    """One fold per distinct group (sorted), its seeds from (`seed`, the group's name)."""
    names = np.asarray(groups)
    folds = []
    for group in sorted(set(groups)):
        held_out = torch.from_numpy(names == group)
        sequence = np.random.SeedSequence([seed, zlib.crc32(group.encode())])
        init_seed, order_seed, dropout_seed = sequence.generate_state(3)
        folds.append(
            Fold(
                group=group,
                train=torch.nonzero(~held_out).flatten(),
                test=torch.nonzero(held_out).flatten(),
                init_seed=int(init_seed),
                order_seed=int(order_seed),
                dropout_seed=int(dropout_seed),
            )
        )
    return folds


def initial_model(fold: Fold, *, num_classes: int, shape: torch.Size, config: TrainConfig) -> nn.Module:
    """The fold's freshly initialised model for inputs of `shape` `[N, C, S, S]`, from its own seed (the
    global generator is left as it was)."""
    builder = MODELS[config.model]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fold.init_seed)
        return builder(num_classes=num_classes, in_channels=shape[1], size=shape[-1], dropout=config.dropout)


def epoch_order(fold: Fold, generator: torch.Generator, *, shuffle: bool) -> torch.Tensor:
    """`[n_train]`: the fold's training clips in this epoch's order."""
    if not shuffle:
        return fold.train
    return fold.train[torch.randperm(len(fold.train), generator=generator)]


def train_fold(
    inputs: torch.Tensor, targets: torch.Tensor, fold: Fold, *, num_classes: int, config: TrainConfig
) -> tuple[nn.Module, torch.Tensor]:
    """Train one fold's model (any `MODELS` entry) by the recipe: (the model, logits of its test clips [n_test, K])."""
    model = initial_model(fold, num_classes=num_classes, shape=inputs.shape, config=config).to(inputs.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    orders = torch.Generator().manual_seed(fold.order_seed)
    with torch.random.fork_rng(devices=[inputs.device] if inputs.is_cuda else []):
        torch.manual_seed(fold.dropout_seed)
        model.train()
        for _ in range(config.epochs):
            for batch in epoch_order(fold, orders, shuffle=config.shuffle).split(config.batch_size):
                batch = batch.to(inputs.device)
                loss = F.cross_entropy(model(inputs[batch]), targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        return model, model(inputs[fold.test.to(inputs.device)])


class FoldAdam:
    """Adam over parameters stacked by fold `[F, ...]`, with each fold's own step count: torch.optim.Adam's
    arithmetic for a fold that had a batch this step; a fold without one is left exactly as it was."""

    def __init__(self, params: list[nn.Parameter], *, lr: float):
        self.params = params
        self.lr = lr
        self.steps = torch.zeros(params[0].shape[0], dtype=torch.float64, device=params[0].device)  # [F]
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One step for the folds where `active` `[F]` is True; the gradients are then cleared."""
        beta1, beta2 = ADAM_BETAS
        self.steps += active
        steps = self.steps.clamp(min=1)  # a fold never stepped yet is inactive: any finite value will do
        step_size = (self.lr / (1 - beta1**steps)).to(self.params[0].dtype)  # [F]
        root_correction2 = (1 - beta2**steps).sqrt().to(self.params[0].dtype)
        for param, exp_avg, exp_avg_sq in zip(self.params, self.exp_avg, self.exp_avg_sq, strict=True):
            shape = (-1,) + (1,) * (param.dim() - 1)
            on = active.view(shape)
            grad = param.grad
            exp_avg.copy_(torch.where(on, torch.lerp(exp_avg, grad, 1 - beta1), exp_avg))
            exp_avg_sq.copy_(torch.where(on, exp_avg_sq * beta2 + (1 - beta2) * grad * grad, exp_avg_sq))
            denom = exp_avg_sq.sqrt() / root_correction2.view(shape) + ADAM_EPS
            param.sub_(torch.where(on, step_size.view(shape) * exp_avg / denom, 0))
            param.grad = None


def epoch_batches(
    folds: Sequence[Fold], generators: Sequence[torch.Generator], *, config: TrainConfig
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This epoch's steps: `(indices [B, F], mask [B, F])`, column f the next batch of fold f's own order
    (padded with clip 0 where its batch is shorter or it has none left; the mask marks the real ones)."""
    pairs = zip(folds, generators, strict=True)
    orders = [epoch_order(fold, generator, shuffle=config.shuffle) for fold, generator in pairs]
    steps = max(math.ceil(len(order) / config.batch_size) for order in orders)
    padded = torch.full((len(folds), steps * config.batch_size), -1, dtype=torch.long)  # [F, steps * B]
    for f, order in enumerate(orders):
        padded[f, : len(order)] = order
    batches = []
    for columns in padded.split(config.batch_size, dim=1):
        mask = columns.T >= 0  # [B, F]
        rows = int(mask.sum(0).max())
        batches.append((columns.T[:rows].clamp(min=0), mask[:rows]))
    return batches


class DropoutDraws:
    """Each fold's dropout draws at every step: `[count, side, side, 16]` int32, uniform in [0, DROPOUT_LEVELS),
    channels-last (count: the fold's batch size this step, maybe 0), from the fold's own generator
    (`dropout_keep` makes them a mask). They are drawn in place into one buffer per fold: fresh tensors would
    cost their page faults at every step, and refilling bumps the buffer's version, so that a graph of an
    earlier step that kept them (the compiled step does) fails in backward rather than reading new draws."""

    def __init__(self, generators: Sequence[torch.Generator], *, batch: int, side: int):
        self.generators = generators
        self.buffers = [torch.empty(batch, side, side, STREAMS, dtype=torch.int32) for _ in generators]

    def __call__(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """This step's draws for the batches of `mask` `[B, F]` (at most `batch` samples each)."""
        if mask.shape[0] > len(self.buffers[0]):
            raise ValueError(f"dropout was set up for batches of {len(self.buffers[0])}, got {mask.shape[0]}")
        pairs = zip(self.buffers, mask.sum(0).tolist(), self.generators, strict=True)
        return [buffer[:count].random_(0, DROPOUT_LEVELS, generator=generator) for buffer, count, generator in pairs]


def folded_model(folds: Sequence[Fold], *, num_classes: int, shape: torch.Size, config: TrainConfig) -> nn.Module:
    """`folds`' freshly initialised models as one folded model (each from its own seed, through the global
    generator: build it in one thread at a time)."""
    models = [initial_model(fold, num_classes=num_classes, shape=shape, config=config) for fold in folds]
    return FOLDED[config.model](models=models, compiled=config.compiled)


def train_folded(
    net: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    folds: Sequence[Fold],
    *,
    config: TrainConfig,
    bar: tqdm,
) -> list[FoldResult]:
    """Train `folds`' folded model `net` by the recipe: per fold (its state dict, logits of its test clips)."""
    net = net.to(inputs.device)
    optimizer = FoldAdam(list(net.parameters()), lr=config.lr)
    orders = [torch.Generator().manual_seed(fold.order_seed) for fold in folds]
    drops = [torch.Generator().manual_seed(fold.dropout_seed) for fold in folds]
    dropout_draws = DropoutDraws(drops, batch=config.batch_size, side=pool_side(inputs.shape[-1]))
    net.train()
    for _ in range(config.epochs):
        for indices, mask in epoch_batches(folds, orders, config=config):
            indices, mask = indices.to(inputs.device), mask.to(inputs.device)
            draws = None
            if config.dropout:
                draws = [d.to(inputs.device) for d in dropout_draws(mask.cpu())]
            logits = net(inputs, indices, mask, draws)  # [B, F, K]
            losses = F.cross_entropy(logits.flatten(0, 1), targets[indices].flatten(), reduction="none")
            losses = losses.view(mask.shape)  # [B, F]
            per_fold = (losses * mask).sum(0) / mask.sum(0).clamp(min=1)  # [F]: each fold's mean over its batch
            per_fold.sum().backward()  # fold f's parameters get fold f's gradient alone
            optimizer.step(mask.any(0))
        bar.update(len(folds))
    net.eval()
    tests = [fold.test for fold in folds]
    padded = torch.nn.utils.rnn.pad_sequence(tests).to(inputs.device)  # [T, F]
    counts = torch.tensor([len(test) for test in tests])
    with torch.no_grad():
        logits = net(inputs, padded, torch.arange(padded.shape[0])[:, None] < counts)  # [T, F, K]
    return [(net.fold_state(f), logits[: len(test), f]) for f, test in enumerate(tests)]


def train_folds_at_once(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    folds: Sequence[Fold],
    *,
    num_classes: int,
    config: TrainConfig,
    bar: tqdm,
) -> list[FoldResult]:
    """Train `folds` together as one folded model: per fold (its state dict, logits of its test clips [n_test, K])."""
    net = folded_model(folds, num_classes=num_classes, shape=inputs.shape, config=config)
    return train_folded(net, inputs, targets, folds, config=config, bar=bar)


def fold_chunks(folds: Sequence[Fold], *, at_once: int, workers: int) -> list[Sequence[Fold]]:
    """`folds` in chunks of at most `at_once`, as many as a multiple of `workers` and as even as can be
    (68 folds, 17 at once, 2 workers: 4 chunks of 17; 24 folds: 2 of 12)."""
    count = workers * math.ceil(len(folds) / (workers * at_once))
    bounds = np.linspace(0, len(folds), count + 1).round().astype(int)
    return [folds[start:stop] for start, stop in itertools.pairwise(bounds) if stop > start]


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` inside (a process-wide setting), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_chunks(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    folds: Sequence[Fold],
    *,
    num_classes: int,
    config: TrainConfig,
    bar: tqdm,
) -> list[FoldResult]:
    """Every fold by its folded model, chunk by chunk. On a CPU with torch's N > 1 threads, N chunks train at
    once, each on one thread of its own: the full-resolution maps' passes are too short to share well between
    threads (and collapse when another process holds a core), whole chunks are not. The models are built
    first, here, since their seeding goes through the global generator."""
    workers = 1 if inputs.is_cuda else torch.get_num_threads()
    if config.compiled and not inputs.is_cuda:
        kernel.stage_library()  # compiled here, once, before any thread asks for it
    chunks = fold_chunks(folds, at_once=config.folds_at_once, workers=workers)
    nets = [folded_model(chunk, num_classes=num_classes, shape=inputs.shape, config=config) for chunk in chunks]
    jobs = [
        functools.partial(train_folded, net, inputs, targets, chunk, config=config, bar=bar)
        for net, chunk in zip(nets, chunks, strict=True)
    ]
    if workers == 1 or len(jobs) == 1:
        return [result for job in jobs for result in job()]
    with intra_op_threads(1), ThreadPoolExecutor(max_workers=workers) as pool:
        return [result for results in pool.map(lambda job: job(), jobs) for result in results]


def check_config(config: TrainConfig) -> None:
    """One-line UserError for a recipe that cannot run."""
    if config.model not in MODELS:
        raise UserError(f"unknown classifier {config.model!r}; known: {', '.join(sorted(MODELS))}")
    if min(config.epochs, config.batch_size, config.folds_at_once) < 1 or not 0 <= config.dropout < 1 or config.lr <= 0:
        raise UserError(
            "training needs epochs, batch size, folds at once >= 1, dropout in [0, 1), lr > 0; got "
            f"{config.epochs}, {config.batch_size}, {config.folds_at_once}, {config.dropout}, {config.lr}"
        )


def check_data(inputs: torch.Tensor, targets: torch.Tensor, groups: Sequence[str], *, num_classes: int) -> None:
    """One-line UserError for inputs the protocol cannot train on."""
    if inputs.dim() != 4 or inputs.dtype != torch.float32:
        raise UserError(f"classifier inputs must be float32 [N, C, S, S], got {inputs.dtype} {list(inputs.shape)}")
    if targets.shape != (inputs.shape[0],) or targets.dtype != torch.long or len(groups) != inputs.shape[0]:
        raise UserError(f"{inputs.shape[0]} inputs need as many long targets and groups: {len(targets)}, {len(groups)}")
    if len(set(groups)) < 2:
        raise UserError(f"leave-one-subject-out needs at least two subjects, got {len(set(groups))}")
    if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < num_classes:
        raise UserError(f"targets must lie in [0, {num_classes}), got [{int(targets.min())}, {int(targets.max())}]")


def train_loso(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    groups: Sequence[str],
    *,
    num_classes: int,
    config: TrainConfig,
    progress: bool = False,
) -> LosoResult:
    """Leave-one-group-out: one model per group, trained on the others; every clip predicted by its group's model.

    `inputs` `[N, C, S, S]` float32, `targets` `[N]` long class indices, `groups[i]` clip i's subject group.
    """
    check_config(config)
    check_data(inputs, targets, groups, num_classes=num_classes)
    folds = make_folds(groups, seed=config.seed)
    logits = torch.empty(len(targets), num_classes, device=inputs.device)
    states = {}
    trained = []
    with progress_bar(total=len(folds) * config.epochs, desc="LOSO", unit="fold-epoch", disable=not progress) as bar:
        if config.model in FOLDED:
            trained = train_chunks(inputs, targets, folds, num_classes=num_classes, config=config, bar=bar)
        else:
            for fold in folds:
                model, fold_logits = train_fold(inputs, targets, fold, num_classes=num_classes, config=config)
                trained.append((model.state_dict(), fold_logits))
                bar.update(config.epochs)
    for fold, (state, fold_logits) in zip(folds, trained, strict=True):
        logits[fold.test.to(inputs.device)] = fold_logits
        states[fold.group] = state
    names = [fold.group for fold in folds]
    return LosoResult(groups=names, predictions=logits.argmax(1), logits=logits, states=states, seed=config.seed)


def train_loso_seeds(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    groups: Sequence[str],
    *,
    num_classes: int,
    config: TrainConfig,
    seeds: int,
    progress: bool = False,
) -> list[LosoResult]:
    """The whole protocol `seeds` times, with seeds `config.seed`, `config.seed + 1`, ...: one result per seed
    (the caller reports the scores' mean and standard deviation)."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    return [
        train_loso(
            inputs,
            targets,
            groups,
            num_classes=num_classes,
            config=dataclasses.replace(config, seed=config.seed + i),
            progress=progress,
        )
        for i in range(seeds)
    ]
