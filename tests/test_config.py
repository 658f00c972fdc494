"""Config truth: every key of a model's property file is the value that model runs with, on every dataset."""

from __future__ import annotations

import pytest
import yaml
from conftest import SCRIPT

from recbole_diffgm import InputError, get_model
from recbole_diffgm.benchmark import Row
from recbole_diffgm.config import PROPERTIES_DIR, Config, model_property_files

MODEL_FILES = sorted((PROPERTIES_DIR / "model").glob("*.yaml"))
DATASET_FILES = sorted((PROPERTIES_DIR / "dataset").glob("*.yaml"))


@pytest.mark.parametrize("dataset_file", DATASET_FILES, ids=lambda path: path.stem)
def test_dataset_files_hold_no_model_recipe_key(dataset_file):
    dataset_keys = set(yaml.safe_load(dataset_file.read_text()))
    for model_file in MODEL_FILES:
        shared = dataset_keys & set(yaml.safe_load(model_file.read_text()))
        assert not shared, f"{dataset_file.name} would override {model_file.name}'s {sorted(shared)}"


MODELS = ("DiffGM", "DigitClassifier", "DiffGMHybrid", "DigitClassifierHybrid", "ARGM", "TIGER", "TextSASRec", "SASRec", "SASRecF", "GRU4Rec", "BERT4Rec")


def model_files(model: str) -> list:
    return model_property_files(get_model(model))


@pytest.mark.parametrize("model", MODELS)
def test_each_model_file_key_reaches_the_model(model):
    expected = {}
    for file in model_files(model):  # bases first: a model's own file wins
        expected |= yaml.safe_load(file.read_text())
    config = Config(model, "amazon-beauty")
    for key, value in expected.items():
        if key == "train_neg_sample_args" and value is None:  # RecBole spells "no sampling" as a dict
            assert config[key]["distribution"] == "none", model
            continue
        assert config[key] == value, f"{model}: {key} is {config[key]!r} at run time, not {value!r}"


def test_every_model_file_is_read_by_a_model_and_argm_repeats_none_of_diffgms_recipe():
    read = {file for model in MODELS for file in model_files(model)}
    assert set(MODEL_FILES) == read, f"read by no model: {sorted(set(MODEL_FILES) - read)}"
    # ARGM and DigitClassifier are DiffGM's controls: they take the shared recipe. (TIGER states its own paper's
    # values, all of them.)
    for model in ("DiffGM", "DigitClassifier", "ARGM"):
        *bases, own = model_files(model)
        inherited = {}
        for file in bases:
            inherited |= yaml.safe_load(file.read_text())
        copies = {key for key, value in yaml.safe_load(own.read_text()).items()
                  if key in inherited and inherited[key] == value}
        assert not copies, f"{own.name} repeats {sorted(copies)} of its base's file"
    assert [file.stem for file in model_files("ARGM")] == ["SIDTransformer", "ARGM"]


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
    for model in ("SASRec", "SASRecF", "TextSASRec", "DiffGM", "ARGM", "TIGER"):
        known |= set(Config(model, "amazon-beauty").final_config_dict)
    for recipe in sorted((PROPERTIES_DIR / "recipes").glob("*.yaml")):
        unknown = set(yaml.safe_load(recipe.read_text())) - known
        assert not unknown, f"{recipe.name}: {sorted(unknown)} are no model's keys (a typo would change nothing)"


def test_the_digit_classifier_recipe_is_the_ablation_winner_in_one_file():
    # What the converged benchmark's DigitClassifier row runs is what the ablation measured, under its own name.
    budget = [str(SCRIPT.parent / "benchmarks" / "diffgm-ablation-cpu.yaml")]

    def final_config(spec: str) -> dict:
        row = Row.parse(spec)
        return Config(row.model, "amazon-beauty", config_file_list=row.config_files(budget)).final_config_dict

    winner = final_config("DiffGM@DiffGM-cpu+sid-reassign+per-position+sid8+all-masked+catalogue-loss")
    recipe = final_config("DigitClassifier@DigitClassifier-cpu")
    differing = {key for key in winner.keys() | recipe.keys() if winner.get(key) != recipe.get(key)}
    # The model's name, and CPD's passes, which one-pass scoring without re-scoring never runs.
    assert differing == {"model", "decode_passes"}, {key: (winner.get(key), recipe.get(key)) for key in differing}
    assert recipe["decode_mode"] == "one_pass" and recipe["rerank_size"] == 0


def test_a_missing_config_file_is_named_wherever_the_config_is_built(tmp_path):
    present = tmp_path / "present.yaml"
    present.write_text("epochs: 3\n")
    with pytest.raises(InputError, match=f"config file not found: {tmp_path / 'nowhere.yaml'}$"):
        Config("SASRec", "amazon-beauty", config_file_list=[str(present), str(tmp_path / "nowhere.yaml")])
    assert Config("SASRec", "amazon-beauty", config_file_list=[str(present)])["epochs"] == 3
