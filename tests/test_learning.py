"""The learning check runs end to end through train.py and evaluate.py (tiny sizes: its table,
not its numbers)."""
from __future__ import annotations

from benchmarks import learning


def test_learning_check_prints_every_row(tmp_path, capsys):
    args = learning.get_args_parser().parse_args(
        ["--device", "cpu", "--steps", "1", "--size", "128", "128", "--batch", "1", "--iters", "1",
         "--eval_iters", "1", "--subjects", "1", "--frames", "3", "--frame_size", "128", "128",
         "--amp_dtype", "bfloat16", "--workdir", str(tmp_path)])
    learning.main(args)
    out = capsys.readouterr().out
    rows = {line[:26].strip(): line[26:].split() for line in out.splitlines()[-4:]}
    assert set(rows) == {"zero flow", "DIS (OpenCV)", "DecFlow fp32", "DecFlow bfloat16 autocast"}
    assert rows["DIS (OpenCV)"][1] == "-" and len(rows["DecFlow fp32"]) == 5  # 3 EPEs, <3px, seconds
    assert all(float(value) >= 0 for value in rows["DecFlow bfloat16 autocast"])
    assert (tmp_path / "fp32.pth").is_file() and (tmp_path / "amp.json").is_file()
