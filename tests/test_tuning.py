"""Ray Tune searches from hyper.test files: parsing every form and bad line, and a real 2-trial search."""

from __future__ import annotations

import csv
import math

import pytest
import yaml
from conftest import NAME

from recbole_diffgm import Config, InputError
from recbole_diffgm.tuning import parse_hyper_file, ray_search_space, run_search


def write(tmp_path, text: str):
    path = tmp_path / "hyper.test"
    path.write_text(text)
    return path


def test_every_recbole_form_parses(tmp_path):
    space = parse_hyper_file(write(tmp_path, """
# a comment, then RecBole's forms
learning_rate loguniform -8,0
hidden_size choice [64,96,128]
mlp_hidden_size choice ['[64,64,64]','[128,128]']
dropout uniform 0.1,0.5   # trailing comment
n_layers quniform 1,4,1
n_heads randint 1,5
"""))
    assert space == {
        "learning_rate": ("loguniform", [-8.0, 0.0]),
        "hidden_size": ("choice", [64, 96, 128]),
        "mlp_hidden_size": ("choice", ["[64,64,64]", "[128,128]"]),
        "dropout": ("uniform", [0.1, 0.5]),
        "n_layers": ("quniform", [1.0, 4.0, 1.0]),
        "n_heads": ("randint", [1.0, 5.0]),
    }
    domains = ray_search_space(space)
    assert domains["learning_rate"].lower == pytest.approx(math.exp(-8))  # RecBole's natural-log bounds
    assert domains["hidden_size"].categories == [64, 96, 128]


@pytest.mark.parametrize("line, message", [
    ("learning_rate loguniform", "line 2: expected '<parameter> <form> <values>'"),
    ("learning_rate lognormal -8,0", "line 2: unknown form 'lognormal'"),
    ("hidden_size choice 64,128", "line 2: choice needs a non-empty Python list"),
    ("hidden_size choice []", "line 2: choice needs a non-empty Python list"),
    ("dropout uniform 0.5", "line 2: uniform needs low,high"),
    ("dropout uniform 0.5,0.1", "line 2: uniform needs low < high"),
    ("dropout uniform a,b", "line 2: uniform needs numbers"),
    ("n_layers quniform 1,4,0", "line 2: quniform needs q > 0"),
    ("n_heads randint 1.5,4", "line 2: randint needs integers"),
    ("epochs choice [1,2]", "line 2: parameter 'epochs' is defined twice"),
])
def test_a_bad_line_is_named_with_its_problem(tmp_path, line, message):
    path = write(tmp_path, f"epochs choice [1,2]\n{line}\n")
    with pytest.raises(InputError, match=message) as error:
        parse_hyper_file(path)
    assert str(path) in str(error.value) and line in str(error.value)


def test_an_empty_or_missing_file_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no search parameters"):
        parse_hyper_file(write(tmp_path, "# nothing\n"))
    with pytest.raises(InputError, match="search-space file not found"):
        parse_hyper_file(tmp_path / "missing.test")


def test_a_real_two_trial_search_selects_on_validation_and_tests_the_best(tiny_config, tmp_path):
    params = write(tmp_path, "learning_rate choice [0.003,0.0001]\n")
    settings = {**tiny_config, "epochs": 2, "hidden_size": 16, "embedding_size": 16}
    summary = run_search("GRU4Rec", NAME, str(params), config_dict=settings, num_samples=2,
                         tune_dir=str(tmp_path / "tune"), cpus_per_trial=1, early_stopping=False)
    folder = tmp_path / "tune" / f"GRU4Rec-{NAME}"
    with (folder / "trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    assert len(trials) == 2 and all(trial["status"] == "finished" for trial in trials)
    best = max(trials, key=lambda trial: float(trial["best_valid_score"]))
    assert summary["best_valid_score"] == pytest.approx(float(best["best_valid_score"]))
    assert yaml.safe_load((folder / "best.yaml").read_text()) == {"learning_rate": float(best["learning_rate"])}
    assert set(summary["test_result"]) == {"recall@5", "ndcg@5"}
    without = {key: value for key, value in settings.items() if key != "learning_rate"}  # config_dict outranks files
    reloaded = Config("GRU4Rec", NAME, config_file_list=[str(folder / "best.yaml")], config_dict=without)
    assert reloaded["learning_rate"] == float(best["learning_rate"])  # best.yaml works as --config_files

    # The same command again finds the search in its folder and resumes it: no trial runs twice.
    again = run_search("GRU4Rec", NAME, str(params), config_dict=settings, num_samples=2,
                       tune_dir=str(tmp_path / "tune"), cpus_per_trial=1, early_stopping=False)
    assert again["trials"] == 2 and again["best_params"] == summary["best_params"]
    assert again["best_valid_score"] == pytest.approx(summary["best_valid_score"])


@pytest.mark.parametrize("model", ["DiffGM", "DigitClassifier", "DiffGMHybrid", "DigitClassifierHybrid", "ARGM", "TIGER",
                                   "SASRec", "GRU4Rec", "BERT4Rec"])
def test_every_shipped_search_space_names_keys_its_model_reads(tiny_config, monkeypatch, model):
    """Each parameter of a shipped search space is read while its model's data, model and trainer are built and
    train an epoch (a key that exists in some property file but that nothing of this model reads tunes nothing)."""
    import recbole.config
    from recbole.data import data_preparation

    from recbole_diffgm import create_dataset, get_model, get_trainer
    from recbole_diffgm.config import PROPERTIES_DIR

    space = parse_hyper_file(PROPERTIES_DIR / "hyper" / f"{model}.test")
    read = set()
    original = recbole.config.Config.__getitem__

    def recording(self, key):
        read.add(key)
        return original(self, key)

    monkeypatch.setattr(recbole.config.Config, "__getitem__", recording)
    config = Config(model, NAME, config_dict={**tiny_config, "rq_vae": {"epochs": 2}, "epochs": 1, "topk": [5, 10],
                                              "valid_metric": "NDCG@10", "valid_beam_size": 16, "test_beam_size": 16})
    train, valid, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], model)(config, get_model(model)(config, train._dataset))
    trainer.fit(train, valid, saved=False)
    assert set(space) - read == set(), f"{model}.test tunes keys the {model} run never reads: {set(space) - read}"


def test_the_root_hyper_test_is_diffgms_search_space_itself():
    from pathlib import Path

    top = Path(__file__).parents[1]
    root = top / "hyper.test"  # where RecBole users look; one source: a link to the installed space
    assert root.is_symlink() and root.resolve() == (top / "properties" / "hyper" / "DiffGM.test").resolve()
    assert parse_hyper_file(root)


def test_a_failed_trial_is_recorded_with_its_error(tiny_config, tmp_path):
    params = write(tmp_path, "hidden_size choice [-1]\n")  # nn.GRU rejects a negative size
    settings = {**tiny_config, "epochs": 1, "embedding_size": 16}
    with pytest.raises(InputError, match="no trial reached a validation"):
        run_search("GRU4Rec", NAME, str(params), config_dict=settings, num_samples=1,
                   tune_dir=str(tmp_path / "tune"), early_stopping=False, max_failures=0)  # retries: test_scale_out
    with (tmp_path / "tune" / f"GRU4Rec-{NAME}" / "trials.csv").open() as handle:
        (trial,) = list(csv.DictReader(handle))
    assert trial["status"] == "error" and trial["error"]


def test_a_resource_ray_cannot_schedule_is_named(tiny_config, tmp_path):
    params = write(tmp_path, "learning_rate choice [0.003]\n")
    with pytest.raises(InputError, match=r"cpus_per_trial 1.5: Ray takes a fraction up to 1 or a whole number"):
        run_search("GRU4Rec", NAME, str(params), config_dict=tiny_config, cpus_per_trial=1.5)
