"""Every recipe of properties/recipes runs: a model with it trains, validates and tests on the tiny catalogue."""

from __future__ import annotations

import pytest
from conftest import NAME

from recbole_diffgm import run_recbole_diffgm
from recbole_diffgm.benchmark import Row

GENERATIVE_ROWS = ["DiffGM@DiffGM-release", "DiffGM@sid-reassign", "DiffGM@sid-disambiguate", "DiffGM@sid8", "DiffGM@sid16", "DiffGM@all-masked", "DiffGM@catalogue-loss",
                   "DiffGM@one-pass", "DiffGM@per-position", "DiffGM@dense-head", "DiffGM@cross-attention-shared",
                   "ARGM@sid-reassign+per-position", "TIGER@TIGER-cpu"]


@pytest.mark.parametrize("spec", GENERATIVE_ROWS)
def test_a_generative_recipe_trains_and_tests(tiny_config, spec):
    row = Row.parse(spec)
    settings = {key: value for key, value in tiny_config.items()
                if key not in ("valid_metric", "valid_metric_weights", "eval_level")}  # what a recipe may set
    settings |= {"epochs": 1, "topk": [5, 10], "valid_metric": "NDCG@10", "valid_beam_size": 16, "test_beam_size": 16,
                 "train_batch_size": 16}
    if row.model == "TIGER":
        settings |= {"sid_quantizer": "rq_kmeans"}  # RQ-VAE training is tested on its own; the recipe is the point
    result = run_recbole_diffgm(row.model, NAME, row.config_files(None), settings)
    assert result["test_result"] and result["epochs_run"] == 1
    level = "sid_" if spec.endswith("DiffGM-release") else ""
    assert set(result["test_result"]) == {f"{level}{metric}@{k}" for metric in ("recall", "ndcg") for k in (5, 10)}


@pytest.mark.parametrize("spec", ["SASRec@SASRec-strong"])
def test_a_recbole_recipe_trains_and_tests(fast_config, spec):
    row = Row.parse(spec)
    result = run_recbole_diffgm(row.model, "beauty-slice", row.config_files(None), {**fast_config, "epochs": 1})
    assert result["test_result"]["ndcg@10"] >= 0
