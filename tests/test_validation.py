"""Validation during training shares its pairs among the processes of a distributed run: a damaged
file in one process's share stops every process with an error, none is left waiting."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import torch
import torch.distributed as dist

from core.datasets import FacialFlow
from core.network import DecFlow
from core.training.validation import validate
from tests.train_helpers import free_port

WORLD_SIZE = 2


def validate_in_process(rank: int, port: int, root: str, results: str) -> None:
    """One process of a 2-process gloo run: validate, and write what it raised (or 'ok') to a file."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        validate(
            DecFlow().eval(),
            FacialFlow(None, split="test", dataset_root=root),
            iters=1,
            device=torch.device("cpu"),
            rank=rank,
            world_size=WORLD_SIZE,
        )
        outcome = "ok"
    except (ValueError, FileNotFoundError) as error:
        outcome = f"{type(error).__name__}: {error}"
    finally:
        dist.destroy_process_group()
    Path(results, f"rank{rank}.txt").write_text(outcome, encoding="utf-8")


def test_a_damaged_pair_on_one_rank_stops_both(synthetic_dataset, tmp_path):
    """Two spawned gloo processes validating (about 10 s: each imports torch and builds the model); a
    damaged pair in rank 1's share stops both with its name."""
    geometry = {"subjects": 1, "frames": 4, "size": (128, 128), "seed": 3, "splits": ("test",)}
    root = synthetic_dataset.copy(tmp_path / "FacialFlowNet", **geometry)
    flows = sorted((root / "flow" / "facial" / "test").rglob("*.flo"))
    damaged = flows[1]  # pair 1: rank 1's share (pairs 0 and 2 are rank 0's)
    damaged.write_bytes(damaged.read_bytes()[:100])
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [
        context.Process(target=validate_in_process, args=(rank, port, str(root), str(tmp_path)))
        for rank in range(WORLD_SIZE)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=180)
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        process.kill()
    assert not hung, f"ranks {hung} still waiting"
    files = [tmp_path / f"rank{rank}.txt" for rank in range(WORLD_SIZE)]
    outcomes = [
        file.read_text(encoding="utf-8") if file.is_file() else f"crashed (exit code {process.exitcode})"
        for file, process in zip(files, processes)
    ]  # without the shared failure count rank 0 crashes in the all-reduce (gloo) or waits (NCCL)
    assert outcomes[1].startswith("UserError") and damaged.name in outcomes[1], outcomes[1]
    assert outcomes[0] == "UserError: validation failed in 1 other process(es) of this run, which printed the error"
