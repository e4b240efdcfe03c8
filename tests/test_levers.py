"""The training-step levers table (benchmarks/levers.py) on CPU: its rows and columns, and a lever
that cannot run reported as such while the other rows still come (not its times)."""

from __future__ import annotations

import math

import torch

from benchmarks import levers


def test_a_failing_lever_leaves_the_other_rows(monkeypatch, capsys):
    monkeypatch.setitem(levers.LEVERS, "broken", levers.Lever(adamw="no such kernel"))
    rows = levers.bench_levers(
        ["fast", "broken"],
        device=torch.device("cpu"),
        size=(128, 128),
        batch=1,
        iters=1,
        amp_dtype=None,
        warmup=1,
        repeats=1,
    )
    assert [row["mode"] for row in rows] == ["fast", "broken (failed)"]
    assert rows[0]["ms"] > 0 and rows[0]["peak_gb"] > 0.1  # a fresh process holds torch and the model
    assert math.isnan(rows[0]["speedup"])  # no straightforward row to compare with
    assert all(math.isnan(rows[1][column]) for column in ("ms", "speedup", "peak_gb"))
    assert "lever broken failed" in capsys.readouterr().out
