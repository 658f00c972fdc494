"""Config truth: every key of a model's property file is the value that model runs with, on every dataset."""

from __future__ import annotations

import pytest
import yaml

from recbole_diffgm.config import PROPERTIES_DIR, Config

MODEL_FILES = sorted((PROPERTIES_DIR / "model").glob("*.yaml"))
DATASET_FILES = sorted((PROPERTIES_DIR / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("dataset_file", DATASET_FILES, ids=lambda path: path.stem)
def test_dataset_files_hold_no_model_recipe_key(dataset_file):
    dataset_keys = set(yaml.safe_load(dataset_file.read_text()))
    for model_file in MODEL_FILES:
        shared = dataset_keys & set(yaml.safe_load(model_file.read_text()))
        assert not shared, f"{dataset_file.name} would override {model_file.name}'s {sorted(shared)}"


@pytest.mark.parametrize("model_file", MODEL_FILES, ids=lambda path: path.stem)
def test_each_model_file_key_reaches_the_model(model_file):
    expected = yaml.safe_load(model_file.read_text())
    config = Config(model_file.stem, "amazon-beauty")
    for key, value in expected.items():
        if key == "train_neg_sample_args" and value is None:  # RecBole spells "no sampling" as a dict
            assert config[key]["distribution"] == "none", model_file.name
            continue
        assert config[key] == value, f"{model_file.name}: {key} is {config[key]!r} at run time, not {value!r}"


def test_tiger_reads_the_paper_history_length_and_sasrec_the_default():
    assert Config("TIGER", "amazon-beauty")["MAX_ITEM_LIST_LENGTH"] == 20
    assert Config("SASRec", "amazon-beauty")["MAX_ITEM_LIST_LENGTH"] == 50
    # A config file or the command line still wins over the model file, as RecBole's priority says.
    assert Config("TIGER", "amazon-beauty", config_dict={"MAX_ITEM_LIST_LENGTH": 10})["MAX_ITEM_LIST_LENGTH"] == 10


def test_every_model_selects_on_valid_metric_by_default():
    for model in ("SASRec", "GRU4Rec", "BERT4Rec", "TIGER", "ARGM", "DiffGM"):
        config = Config(model, "amazon-beauty")
        assert config["valid_metric"] == "NDCG@10" and config["valid_metric_weights"] is None, model


def test_every_recipe_key_is_a_key_some_model_reads():
    known = set()
    for model in ("SASRec", "DiffGM", "ARGM", "TIGER"):
        known |= set(Config(model, "amazon-beauty").final_config_dict)
    for recipe in sorted((PROPERTIES_DIR / "recipes").glob("*.yaml")):
        unknown = set(yaml.safe_load(recipe.read_text())) - known
        assert not unknown, f"{recipe.name}: {sorted(unknown)} are no model's keys (a typo would change nothing)"
