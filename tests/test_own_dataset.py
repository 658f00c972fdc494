"""A dataset of one's own, under a new name, with the defaults: the columns its files have decide what is loaded,
what orders each user's sequence, and which fields make the item text; a key set by hand stays as it is."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import read_atomic, write_slice
from recbole.data import data_preparation

from recbole_diffgm import (
    Config,
    InputError,
    create_dataset,
    load_data_and_model,
    run_recbole_diffgm,
)
from recbole_diffgm.data.sid import SIDSettings

OWN = "toys-own"  # no property file ships for it
ITEM_COLUMNS = ["item_id:token", "title:token_seq", "categories:token_seq"]


def write_own(root: Path, users: int, time: bool = True) -> Path:
    """The first ``users`` users of amazon-beauty as ``OWN``: an ``.item`` of id, title and categories only; without
    ``time``, an ``.inter`` of ids only, its rows shuffled (the users interleaved, each user's rows in a new order)."""
    write_slice(users, root, OWN)
    folder = root / OWN
    read_atomic(folder / f"{OWN}.item")[ITEM_COLUMNS].to_csv(
        folder / f"{OWN}.item", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    if not time:
        inter = read_atomic(folder / f"{OWN}.inter").drop(columns="timestamp:float")
        inter = inter.iloc[np.random.default_rng(0).permutation(len(inter))]
        inter.to_csv(folder / f"{OWN}.inter", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    return folder


@pytest.fixture
def diffgm_config(tiny_config, tmp_path) -> dict:
    """tiny_config's small DiffGM, with RecBole's and this plugin's defaults for the data (no load_col, no
    eval_args, no item_text_fields), on ``OWN`` with a timestamp."""
    write_own(tmp_path / "data", users=40)
    config = {key: value for key, value in tiny_config.items() if key not in ("load_col", "eval_args")}
    return {**config, "epochs": 1}


def test_diffgm_with_the_defaults_embeds_the_fields_the_item_file_has(diffgm_config, caplog):
    with caplog.at_level(logging.INFO):
        result = run_recbole_diffgm("DiffGM", OWN, config_dict=diffgm_config)
    assert result["epochs_run"] == 1 and result["test_result"] and result["test_users"] == 40
    assert ("item_text_fields not set: the item text is title, categories of toys-own.item (the default fields it "
            "has; it has no price, brand)") in caplog.text
    assert ("load_col not set: loading user_id, item_id, timestamp of toys-own.inter; item_id of toys-own.item"
            in caplog.text)

    # What the trained model's SIDs were built from: its saved config's fields and the texts they make.
    config, model, dataset, *_ = load_data_and_model(result["model_file"])
    assert config["item_text_fields"] == {"title": "Title", "categories": "Category"}
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]}
    texts = dataset.item_texts(config).texts
    assert SIDSettings.from_config(config).codes_key(texts) == model.sid_catalogue["key"]
    assert all(text.startswith(("Title: ", "Category: ")) for text in texts)
    assert sum(" Category: " in text for text in texts) > len(texts) / 2
    assert not any("Price: " in text or "Brand: " in text for text in texts)


@pytest.fixture
def sasrec_config(tmp_path, monkeypatch) -> dict:
    """A small SASRec with the data defaults, on ``OWN`` without a timestamp."""
    monkeypatch.chdir(tmp_path)
    write_own(tmp_path / "data", users=60, time=False)
    return {"data_path": str(tmp_path / "data"), "checkpoint_dir": str(tmp_path / "saved"), "epochs": 1,
            "train_batch_size": 256, "eval_batch_size": 256, "hidden_size": 16, "inner_size": 32, "n_layers": 1,
            "n_heads": 1, "show_progress": False}


def test_sasrec_without_a_timestamp_holds_out_each_users_last_rows_of_the_file(sasrec_config, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        result = run_recbole_diffgm("SASRec", OWN, config_dict=sasrec_config)
    assert result["epochs_run"] == 1 and result["test_result"] and result["test_users"] == 60
    inter_file = tmp_path / "data" / OWN / f"{OWN}.inter"
    assert (f"{inter_file} has no 'timestamp' column (TIME_FIELD): each user's sequence is in file order, the "
            "user's rows in the order they appear in the file") in caplog.text

    inter = read_atomic(inter_file)
    sequences = inter.groupby("user_id:token", sort=False)["item_id:token"].agg(list).to_dict()
    assert any(items != sorted(items) for items in sequences.values())  # the file order is no sorted order
    config = Config("SASRec", OWN, config_dict=sasrec_config)
    dataset = create_dataset(config)
    _, valid, test = (data._dataset for data in data_preparation(config, dataset))

    def rows(split):
        users = dataset.id2token("user_id", split.inter_feat["user_id"].numpy())
        items = dataset.id2token("item_id", split.inter_feat["item_id"].numpy())
        histories = [list(dataset.id2token("item_id", history[:length])) for history, length
                     in zip(split.inter_feat["item_id_list"].numpy(), split.inter_feat["item_length"].tolist())]
        return {user: (item, history) for user, item, history in zip(users, items, histories)}

    assert rows(test) == {user: (items[-1], items[:-1][-50:]) for user, items in sequences.items()}
    assert rows(valid) == {user: (items[-2], items[:-2][-50:]) for user, items in sequences.items()}


@pytest.mark.parametrize("where", ["config_dict", "config file"])
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"item_text_fields": ["title", "price"]},
         ("{item}: no column 'price' (columns: item_id, title, categories); set item_text_fields to the columns to "
          "embed")),
        ({"load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "price"]}},
         ("{item}: no column 'price' (columns: item_id:token, title:token_seq, categories:token_seq); set load_col to "
          "the columns to load")),
        ({"load_col": {"inter": ["user_id", "item_id"]}},
         ("{inter}: load_col leaves out 'timestamp' (TIME_FIELD), which orders each user's sequence; add it to "
          "load_col's inter columns")),
    ],
    ids=["item_text_fields", "load_col", "load_col without the time"],
)
def test_a_key_set_by_hand_that_names_a_missing_column_is_an_error_naming_the_key(
        diffgm_config, tmp_path, where, overrides, message):
    folder = tmp_path / "data" / OWN
    if where == "config_dict":
        config = Config("DiffGM", OWN, config_dict={**diffgm_config, **overrides})
    else:
        (tmp_path / "own.yaml").write_text(yaml.safe_dump(overrides))
        config = Config("DiffGM", OWN, config_file_list=[str(tmp_path / "own.yaml")], config_dict=diffgm_config)
    with pytest.raises(InputError) as error:
        create_dataset(config)
    assert str(error.value) == message.format(item=folder / f"{OWN}.item", inter=folder / f"{OWN}.inter")
