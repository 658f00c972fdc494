"""The tuned benchmark: the same Ray Tune budget for every model, then the winners side by side."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import yaml
from conftest import NAME

from recbole_diffgm import InputError
from recbole_diffgm.tuned_benchmark import parse_budget, run_tuned_benchmark


def test_budgets_are_trials_with_an_optional_time_limit():
    assert parse_budget("8") == (8, None)
    assert parse_budget("8,30m") == (8, 1800.0)
    assert parse_budget("2,1h") == (2, 3600.0)
    for bad in ("", "x", "0", "8,30", "8,-1m", "8,5d"):
        with pytest.raises(InputError, match=f"tune_budget '{bad}'"):
            parse_budget(bad)


def test_two_models_are_tuned_alike_then_benchmarked_and_a_rerun_reuses_the_searches(tiny_config, tmp_path, caplog):
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "GRU4Rec.test").write_text("learning_rate choice [0.003,0.0001]\n")
    (spaces / "DiffGM.test").write_text("label_smoothing choice [0.0,0.2]\n")
    settings = {**tiny_config, "epochs": 1, "hidden_size": 16, "embedding_size": 16}
    results = tmp_path / "results"

    def tuned_benchmark():
        return run_tuned_benchmark(["GRU4Rec", "DiffGM"], NAME, "2", config_dict=settings, results_dir=str(results),
                                   command="python run_recbole_diffgm.py ...", params_dir=str(spaces))

    rows = tuned_benchmark()
    assert [row["model"] for row in rows] == ["GRU4Rec", "DiffGM"] and not any(row["error"] for row in rows)
    for model, key, default in (("GRU4Rec", "learning_rate", 0.003), ("DiffGM", "label_smoothing", 0.1)):
        folder = results / f"{NAME}-tuning" / model
        with (folder / "trials.csv").open() as handle:
            trials = list(csv.DictReader(handle))
        assert len(trials) == 2 and default in {float(trial[key]) for trial in trials}
        summary = json.loads((folder / "search.json").read_text())["summary"]
        assert summary["default_params"] == {key: default} and summary["default_valid_score"] is not None
        row_config = yaml.safe_load((results / f"{NAME}-configs" / f"{model}.yaml").read_text())
        assert row_config[key] == summary["best_params"][key]  # the benchmark ran the tuned value
    table = (results / f"{NAME}-tuning.md").read_text()
    assert "| GRU4Rec | 2 | 0 |" in table and "| DiffGM | 2 | 0 |" in table
    assert "learning_rate choice [0.003,0.0001]" in table and "label_smoothing: 0.1 →" in table
    assert (results / f"{NAME}.md").is_file() and (results / f"{NAME}.png").is_file()

    with caplog.at_level(logging.INFO):
        again = tuned_benchmark()
    assert caplog.text.count("search with this budget is done; reusing it") == 2
    assert [row["model"] for row in again] == ["GRU4Rec", "DiffGM"]
