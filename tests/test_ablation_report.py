"""benchmarks/diffgm_ablation.py: a run store's rows, their checkpoints tested again with other scoring modes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import NAME

from recbole_diffgm.benchmark import run_benchmark
from recbole_diffgm.quick_start import evaluate_saved_model

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "diffgm_ablation.py"


def report(runs: Path, out: Path, *modes: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), f"--runs={runs}", f"--out={out}",
                           *(f"--mode={mode}" for mode in modes)], check=False, capture_output=True,
                          text=True)


def test_the_report_tests_each_checkpoint_again_and_keeps_what_it_scored(tiny_config, tmp_path):
    settings = {**tiny_config, "epochs": 1, "decode_mode": "one_pass", "topk": [5, 10]}
    run_benchmark(["DiffGM"], NAME, config_dict=settings, results_dir=str(tmp_path / "ablation"))
    runs = tmp_path / "ablation" / f"{NAME}-runs"
    out = tmp_path / "ablation.md"
    done = report(runs, out, "CPD beam 12:decode_mode=cpd,test_beam_size=12",
                  "SID level:decode_mode=cpd,test_beam_size=12,eval_level=sid")
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    (run_dir,) = runs.iterdir()
    assert f"| {run_dir.name} | 1 | 0 | epoch cap |" in text
    model_file = json.loads((run_dir / "run.json").read_text())["result"]["model_file"]
    again = evaluate_saved_model(model_file, {"decode_mode": "cpd", "test_beam_size": 12}, split="test")
    assert "| CPD beam 12: R@10 (item) | N@10 | ms per user | SID level: R@10 (SID) |" in text
    test = json.loads((run_dir / "run.json").read_text())["result"]["test_result"]
    assert (f"| {run_dir.name} | OCN views | one_pass | {test['recall@10']:.4f} | {test['ndcg@10']:.4f} | "
            f"{again['recall@10']:.4f} | {again['ndcg@10']:.4f} |") in text

    # Kept: with the checkpoint gone, the scored modes are reported again; a new mode says what is missing.
    Path(model_file).unlink()
    assert report(runs, out, "CPD beam 12:decode_mode=cpd,test_beam_size=12").returncode == 0
    assert f"{again['ndcg@10']:.4f}" in out.read_text()
    missing = report(runs, out, "CPD beam 16:decode_mode=cpd,test_beam_size=16")
    assert missing.returncode != 0 and f"its checkpoint {model_file} is gone" in missing.stderr


def test_a_mode_that_is_not_key_value_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    refused = report(tmp_path / "runs", tmp_path / "out.md", "beam 4:test_beam_size")
    assert refused.returncode != 0 and "'test_beam_size' is not key=value" in refused.stderr
