"""Training to a budget: a time budget that stops between epochs, the stop reason, the learning curve, and one
selection rule (valid_metric_weights) for every model."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from conftest import NAME
from recbole.trainer import Trainer

from recbole_diffgm import Config, InputError, create_dataset, get_model, get_trainer, run_recbole_diffgm
from recbole_diffgm.checks import parse_duration
from recbole_diffgm.trainer import plugin
from recbole_diffgm.trainer.plugin import epochs_the_budget_allows


def diffgm(tiny_config, **settings) -> dict:
    return {**tiny_config, "epochs": 3, "eval_step": 1, "stopping_step": 10, **settings}


@pytest.mark.parametrize("clock", ["wall", "process"])
def test_a_time_budget_stops_between_epochs_and_tests_the_best_checkpoint(tiny_config, clock, caplog):
    with caplog.at_level("INFO"):
        result = run_recbole_diffgm("DiffGM", NAME, config_dict=diffgm(
            tiny_config, epochs=50, time_budget="0.01s", time_budget_clock=clock))
    assert result["stop_reason"] == "time budget" and result["epochs_run"] == 1  # never before one validation
    assert result["best_epoch"] == 0 and set(result["test_result"]) == {"recall@5", "ndcg@5"}
    assert "training stops; the best checkpoint is tested" in caplog.text
    assert [point["epoch"] for point in result["curve"]] == [0]


def test_without_a_budget_a_run_stops_at_the_epoch_cap_or_by_patience_and_keeps_its_curve(tiny_config):
    result = run_recbole_diffgm("DiffGM", NAME, config_dict=diffgm(tiny_config))
    assert result["stop_reason"] == "epoch cap" and result["epochs_run"] == 3
    curve = result["curve"]
    assert [point["epoch"] for point in curve] == [0, 1, 2]
    assert curve[0]["train_seconds"] < curve[1]["train_seconds"] < curve[2]["train_seconds"]
    assert all(point["valid_score"] == point["ndcg@5"] for point in curve)  # valid_metric NDCG@5
    best = max(curve, key=lambda point: point["valid_score"])
    assert result["best_epoch"] == best["epoch"] and result["best_valid_result"]["ndcg@5"] == best["ndcg@5"]
    with Path(result["curve_file"]).open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert {"train_seconds", "train_cpu_seconds", "valid_score", "ndcg@5", "recall@5"} <= set(rows[0])



def test_patience_stops_a_run_and_a_tie_selects_the_later_epoch(tiny_config, monkeypatch):
    # Validation scores that rise, tie, then fall: RecBole's early stopping counts a tie as an improvement.
    scores = iter([0.1, 0.3, 0.3, 0.2, 0.1, 0.0])
    monkeypatch.setattr(Trainer, "_valid_epoch", lambda self, data, show_progress=False: (
        (score := next(scores)), {"recall@5": score, "ndcg@5": score}))
    result = run_recbole_diffgm("DiffGM", NAME, config_dict=diffgm(tiny_config, epochs=6, stopping_step=1))
    assert result["stop_reason"] == "patience" and result["epochs_run"] == 5
    assert result["best_epoch"] == 2 and [point["valid_score"] for point in result["curve"]] == [0.1, 0.3, 0.3, 0.2, 0.1]


@pytest.mark.parametrize(("value", "seconds"), [(120, 120), ("90s", 90), ("60m", 3600), ("1.5h", 5400)])
def test_durations(value, seconds):
    assert parse_duration(value, "time_budget") == seconds


@pytest.mark.parametrize("value", ["60x", "-5", "0", "soon", ""])
def test_a_bad_duration_is_named(value):
    with pytest.raises(InputError, match=f"time_budget '{value}': give a positive duration"):
        parse_duration(value, "time_budget")


def test_valid_metric_weights_select_for_recbole_models_too(fast_config):
    weights = {"ndcg@10": 0.5, "recall@10": 0.5}
    result = run_recbole_diffgm("SASRec", "beauty-slice", config_dict={**fast_config, "valid_metric_weights": weights})
    valid = result["best_valid_result"]
    assert result["best_valid_score"] == pytest.approx(0.5 * valid["ndcg@10"] + 0.5 * valid["recall@10"])
    with pytest.raises(InputError, match=r"valid_metric_weights names \['hit@10'\]"):
        run_recbole_diffgm("SASRec", "beauty-slice", config_dict={**fast_config, "valid_metric_weights": {"hit@10": 1}})


def test_a_run_trains_another_epoch_while_one_more_at_the_mean_cost_fits_its_budget():
    assert epochs_the_budget_allows(budget=60, spent=20, epochs_trained=4) == 8  # 5 s an epoch, 40 s left
    assert epochs_the_budget_allows(budget=60, spent=56, epochs_trained=4) == 0  # 14 s an epoch, 4 s left
    assert epochs_the_budget_allows(budget=60, spent=45, epochs_trained=3) == 1  # exactly one more fits
    assert epochs_the_budget_allows(budget=60, spent=70, epochs_trained=5) == 0  # over budget already


def test_the_time_left_counts_the_epochs_the_budget_allows_when_it_ends_the_run_first(tiny_config, caplog):
    with caplog.at_level("INFO"):
        result = run_recbole_diffgm("DiffGM", NAME, config_dict=diffgm(  # CPU time: steadier than wall on busy cores
            tiny_config, epochs=300, stopping_step=300, time_budget="8s", time_budget_clock="process"))
    assert result["stop_reason"] == "time budget"
    lines = [line for line in caplog.text.splitlines() if "min per epoch so far" in line]
    assert lines, "the budget ended the run before its second epoch"
    for line in lines:
        epoch, left = map(int, re.search(r"epoch (\d+)/300: .* \((\d+) epochs? to the time budget\)", line).groups())
        assert left < 300 - epoch  # fewer than the epoch cap leaves


def test_the_first_steps_give_an_estimate_and_a_slow_cpu_run_names_a_recipe_that_fits(tiny_config, monkeypatch,
                                                                                      caplog):
    monkeypatch.setattr(plugin, "FIRST_ESTIMATE_AFTER_S", 0)  # at the first step: the tiny data trains in a second
    scores = iter([0.2, 0.1])  # then patience ends the run of a million epochs
    monkeypatch.setattr(Trainer, "_valid_epoch", lambda self, data, show_progress=False: (
        (score := next(scores)), {"recall@5": score, "ndcg@5": score}))
    with caplog.at_level("INFO"):
        run_recbole_diffgm("DiffGM", NAME, config_dict=diffgm(tiny_config, epochs=10**6, stopping_step=0))
    estimates = [line for line in caplog.text.splitlines() if "first estimate" in line]
    assert len(estimates) == 1  # the first epoch of the run only
    assert re.search(r"from 1 of \d+ steps: [\d.]+ min an epoch of training \([\d.]+ CPU-min\), 1000000 epochs: "
                     r"about [\d.]+ (h|days) of training", estimates[0])
    assert estimates[0].endswith("--model=DiffGM@DiffGM-ocn-cpu trains for 60 CPU-minutes, validation extra "
                                 "(properties/recipes/DiffGM-ocn-cpu.yaml)")
    assert caplog.text.index("first estimate") < caplog.text.index("epoch 0 training")


def test_a_run_that_fits_in_its_budget_gets_its_estimate_without_advice(tiny_config, monkeypatch, caplog):
    monkeypatch.setattr(plugin, "FIRST_ESTIMATE_AFTER_S", 0)
    with caplog.at_level("INFO"):
        run_recbole_diffgm("DiffGM", NAME, config_dict=diffgm(tiny_config, epochs=1))
    estimate = next(line for line in caplog.text.splitlines() if "first estimate" in line)
    assert re.search(r"1 epochs: about \d+ min of training, validation not counted$", estimate)


def test_a_resumed_runs_estimate_counts_the_budget_it_spent_before(fast_config, caplog):
    config = Config("SASRec", "beauty-slice", config_dict={**fast_config, "epochs": 300, "time_budget": "10m"})
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, get_model("SASRec")(config, create_dataset(config)))
    trainer._epoch_clock = (2, 0.0)  # resumed at epoch 2
    with caplog.at_level("INFO"):  # 10 of 100 steps in 10 s: 100 s an epoch; 300 s of the 600 spent before
        trainer._log_first_estimate(10, 100, {"wall": 10.0, "process": 10.0}, before=300.0)
    assert "3 epochs to the time budget (5 min of it spent before this resume): about 5 min of training" in caplog.text


def test_with_eval_step_above_one_the_budgets_last_epoch_is_validated(tiny_config, monkeypatch):
    # Every epoch costs 10 s of training on the budget's clock: a 45 s budget trains epochs 0-3. eval_step 3
    # validates epoch 2; epoch 3, the last the budget allows, is validated too, so selection sees it.
    monkeypatch.setattr(plugin.PluginTrainerMixin, "training_seconds", lambda self: dict.fromkeys(
        ("wall", "process"), 10.0 * (self.epochs_trained + (self._epoch_idx is not None))))
    result = run_recbole_diffgm("DiffGM", NAME, config_dict=diffgm(tiny_config, epochs=50, eval_step=3,
                                                                    time_budget="45s"))
    assert result["stop_reason"] == "time budget" and result["epochs_run"] == 4
    assert [point["epoch"] for point in result["curve"]] == [2, 3]
