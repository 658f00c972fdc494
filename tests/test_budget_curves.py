"""benchmarks/budget_curves.py: the same rows' validation curves at two budgets, from one or several run stores."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "budget_curves.py"


def write_curve(path: Path, scores: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["epoch", "train_cpu_seconds", "ndcg@10"])
        writer.writeheader()
        writer.writerows({"epoch": epoch, "train_cpu_seconds": 600 * (epoch + 1), "ndcg@10": score}
                         for epoch, score in enumerate(scores))


def test_a_budgets_rows_come_from_the_first_store_that_has_them_and_missing_ones_are_named(tmp_path):
    write_curve(tmp_path / "short" / "a.csv", [0.01, 0.02])
    write_curve(tmp_path / "short" / "b.csv", [0.03])
    write_curve(tmp_path / "long" / "a.csv", [0.01, 0.02, 0.04, 0.03])
    write_curve(tmp_path / "long-other" / "b.csv", [0.03, 0.05])
    out = tmp_path / "curves"
    budgets = (f"20 min:{tmp_path / 'short'},"
               f"80 min:{tmp_path / 'long'}+{tmp_path / 'long-other'}")
    done = subprocess.run([sys.executable, str(SCRIPT), "--rows=a,b,c", f"--budgets={budgets}", f"--out={out}"],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = out.with_suffix(".md").read_text()
    assert "| a | 80 min | 4 | 0.0400 (epoch 2, 30 CPU-min) | 0.0300 | 40 |" in text
    assert "| b | 80 min | 2 | 0.0500 (epoch 1, 20 CPU-min) | 0.0500 | 20 |" in text
    assert "| b | 20 min | 1 | 0.0300 (epoch 0, 10 CPU-min) | 0.0300 | 10 |" in text
    assert f"c at 80 min (not in {tmp_path / 'long'} or {tmp_path / 'long-other'}: not run yet)" in text
    assert out.with_suffix(".png").is_file()
