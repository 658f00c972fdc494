"""benchmarks/eval_memory.py: the test split measured in parts, each resumed after its last recorded batch."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import NAME

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def eval_memory(tiny_config, tmp_path, monkeypatch):
    """Runs the script in this process (its CLI, its files) on the tiny catalogue: ``run(*flags)``."""
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**tiny_config, "state": "WARNING"}))
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the script imports a sibling script
    threads = torch.get_num_threads()

    def run(*flags: str, out: Path = tmp_path / "eval-memory.md") -> str:
        monkeypatch.setattr(sys, "argv", ["eval_memory.py", f"--dataset={NAME}", "--recipe=",
                                          f"--config_files={config_file}", "--threads=1", "--beam=8",
                                          f"--out={out}", *flags])
        try:
            runpy.run_path(str(BENCHMARKS / "eval_memory.py"), run_name="__main__")
        finally:
            torch.set_num_threads(threads)
        return out.read_text()

    return run


def test_parts_cover_the_split_once_and_a_batch_cut_short_is_measured_again(eval_memory, tmp_path):
    eval_memory("--eval_batch_size=8", "--part=1/2")
    report = eval_memory("--eval_batch_size=8", "--part=2/2")
    assert "Evaluated: 24 of 24 test users (24 in the split), eval_batch_size 8, test beam 8\n" in report
    assert "| 1/2 | 0–11 |" in report and "| 2/2 | 12–23 |" in report  # batches of 8 then 4 in each part

    # Part 2 killed during its last batch: its file ends one batch earlier; the same command evaluates that batch.
    progress = tmp_path / "eval-memory.md.progress" / "part-2-of-2.json"
    stored = json.loads(progress.read_text())
    assert [row["users"] for row in stored["runs"][0]["rows"]] == [8, 12]
    stored["runs"][0]["rows"].pop()
    progress.write_text(json.dumps(stored))
    report = eval_memory("--eval_batch_size=8", "--part=2/2")
    runs = json.loads(progress.read_text())["runs"]
    assert [(run["first_user"], [row["users"] for row in run["rows"]]) for run in runs] == [(12, [8]), (20, [4])]
    assert "Evaluated: 24 of 24 test users" in report and "| 2/2 | 20–23 |" in report

    # Done: a rerun evaluates nothing more.
    eval_memory("--eval_batch_size=8", "--part=2/2")
    assert len(json.loads(progress.read_text())["runs"]) == 2

    # Measurements of other settings are neither resumed nor overwritten.
    with pytest.raises(SystemExit, match=r"part-1-of-2.json holds measurements of other settings "
                                         r"\(--eval_batch_size=8 there, 4 now\)"):
        eval_memory("--eval_batch_size=4", "--part=1/2")


def test_a_missing_config_file_is_named_in_one_line(eval_memory, tmp_path):
    with pytest.raises(SystemExit, match=f"^error: config file not found: {tmp_path / 'nowhere.yaml'}$"):
        eval_memory(f"--config_files={tmp_path / 'nowhere.yaml'}", out=tmp_path / "other.md")
