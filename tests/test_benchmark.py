"""Benchmark mode: every model on one split, each in its own process; a failed model keeps its row."""

from __future__ import annotations

import csv

import yaml
from conftest import NAME

from recbole_diffgm.benchmark import run_benchmark


def test_the_benchmark_writes_every_row_including_a_failed_one(tiny_config, tmp_path):
    settings = {**tiny_config, "epochs": 1, "topk": [5, 10], "hidden_size": 16, "embedding_size": 16}
    rows = run_benchmark(["GRU4Rec", "NoSuchModel", "DiffGM"], NAME, config_dict=settings,
                         results_dir=str(tmp_path / "results"))
    assert [row["model"] for row in rows] == ["GRU4Rec", "NoSuchModel", "DiffGM"]
    gru, missing, diffgm = rows
    assert not gru["error"] and not diffgm["error"] and "NoSuchModel" in missing["error"]
    assert "recall@5" in gru and "sid_recall@5" not in gru  # SID-level only for generative models
    assert {"recall@5", "sid_recall@5", "inference_ms_per_user", "parameters", "peak_memory_mb"} <= set(diffgm)
    with (tmp_path / "results" / f"{NAME}.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [line["model"] for line in table] == ["GRU4Rec", "NoSuchModel", "DiffGM"]
    assert "NoSuchModel" in table[1]["error"] and table[1]["recall@5"] == "–"
    assert float(table[2]["recall@5"]) == round(diffgm["recall@5"], 4)
    markdown = (tmp_path / "results" / f"{NAME}.md").read_text()
    assert markdown.count("\n| ") == 4  # header + 3 rows
    assert (tmp_path / "results" / f"{NAME}.png").stat().st_size > 0
    config = yaml.safe_load((tmp_path / "results" / f"{NAME}-configs" / "DiffGM.yaml").read_text())
    assert config["model"] == "DiffGM" and config["epochs"] == 1 and config["n_embd"] == 32
