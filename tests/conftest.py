"""Shared fixtures: a small real slice of amazon-beauty and fast training settings."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from recbole.data import data_preparation

from recbole_diffgm import Config, create_dataset, get_model
from recbole_diffgm.config import DATASET_DIR

# Ray 2.60 (Python 3.12+) fixes a process's authentication mode when it first starts a cluster: with the mode unset,
# the first local ray.init turns token authentication on for the rest of the process (and writes ~/.ray/auth_token),
# and a later cluster of another mode, or a node started without the token, cannot be joined. One mode for every Ray
# the tests start, set before any of them: none (Ray 2.6.3 has no such setting).
os.environ["RAY_AUTH_MODE"] = "disabled"

BEAUTY = "amazon-beauty"
TEST_DATA = Path(__file__).parent / "data"
SCRIPT = Path(__file__).parents[1] / "run_recbole_diffgm.py"


def read_atomic(path: Path) -> pd.DataFrame:
    """An atomic file as strings, exactly as written (no quoting, empty cells kept)."""
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)


def write_slice(users: int, out_root: Path, name: str = "beauty-slice") -> Path:
    """The first ``users`` users of amazon-beauty, all their rows, and the rows of their items."""
    inter = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.inter")
    item = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.item")
    kept_users = inter["user_id:token"].drop_duplicates().iloc[:users]
    inter = inter[inter["user_id:token"].isin(kept_users)]
    item = item[item["item_id:token"].isin(inter["item_id:token"])]
    folder = out_root / name
    folder.mkdir(parents=True)
    inter.to_csv(folder / f"{name}.inter", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    item.to_csv(folder / f"{name}.item", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    return out_root


NAME = "sid-tiny"
N_ITEMS = 48


def write_tiny(root, item_rows: pd.DataFrame | None = None):
    """48 real Beauty items, 24 users x 6 items. Item 1 is a copy of item 0's text; item 2 has no text."""
    items = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.item").iloc[:N_ITEMS].copy()
    items.iloc[1, 1:] = items.iloc[0, 1:]
    items.iloc[2, 1:] = ""
    items = items if item_rows is None else item_rows
    folder = root / NAME
    folder.mkdir(parents=True, exist_ok=True)
    tokens = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.item")["item_id:token"].iloc[:N_ITEMS].tolist()
    with (folder / f"{NAME}.inter").open("w") as inter:
        inter.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(24):
            inter.writelines(f"u{user}\t{tokens[(2 * user + k) % N_ITEMS]}\t{k}\n" for k in range(6))
    items.to_csv(folder / f"{NAME}.item", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    return items


@pytest.fixture(scope="session")
def slice_root(tmp_path_factory) -> Path:
    """A data_path holding ``beauty-slice``: 300 real users of amazon-beauty."""
    return write_slice(300, tmp_path_factory.mktemp("data"))


@pytest.fixture
def fast_config(slice_root, tmp_path, monkeypatch) -> dict:
    """A config_dict that trains a small SASRec on the slice in seconds, writing only under tmp_path."""
    monkeypatch.chdir(tmp_path)  # RecBole writes log/ and log_tensorboard/ into the working directory
    return {
        "data_path": str(slice_root),
        "checkpoint_dir": str(tmp_path / "saved"),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "price"]},
        "field_separator": "\t",
        "MAX_ITEM_LIST_LENGTH": 50,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [5, 10],
        "valid_metric": "NDCG@10",
        "epochs": 2,
        "train_batch_size": 256,
        "eval_batch_size": 256,
        "hidden_size": 16,
        "inner_size": 32,
        "n_layers": 1,
        "show_progress": False,
        "state": "WARNING",
    }


@pytest.fixture(scope="session")
def shared_sid_cache(tmp_path_factory) -> Path:
    """One embedding and SID cache for the session's tiny runs: its files are keyed by the texts and every setting
    that determines them, so runs share it as a user's runs do (tests of the cache itself use a folder of their own)."""
    return tmp_path_factory.mktemp("sid_cache")


@pytest.fixture
def tiny_config(tmp_path, monkeypatch, shared_sid_cache):
    """A config_dict for a small DiffGM on the tiny catalogue of test_sid (8 codes per digit)."""
    monkeypatch.chdir(tmp_path)
    write_tiny(tmp_path / "data")
    return {
        "data_path": str(tmp_path / "data"),
        "checkpoint_dir": str(tmp_path / "saved"),
        "sid_cache_dir": str(shared_sid_cache),
        "field_separator": "\t",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "price"]},
        "codebook_size": 8,
        "sent_emb_pca": 16,
        "n_embd": 32,
        "n_inner": 64,
        "n_head": 2,
        "decoder_n_layer": 2,
        "train_batch_size": 64,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [5],
        "valid_metric": "NDCG@5",
        "valid_metric_weights": None,
        "eval_start_epoch": 0,
        "warmup_steps": None,
        "eval_level": "item",
        "dedup_strategy": "simple",
        "learning_rate": 0.003,
        "show_progress": False,
    }


@pytest.fixture
def tiny(tiny_config):
    """An untrained DiffGM on the tiny catalogue, a training batch and a validation batch."""
    config = Config("DiffGM", NAME, config_dict=tiny_config)
    train, valid, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return get_model("DiffGM")(config, train._dataset), next(iter(train)), next(iter(valid))[0]


def catalogue_beams(model, data, beam_size: int):
    """By hand, for the SID-level tests: each user's target SID and beams ``[(SID, score), ...]`` in beam order,
    the beams that reach a catalogue SID only (``model.decode`` on every batch of ``data``)."""
    catalogue = {tuple(sid) for sid in model.item_sid[1:].tolist()}
    for interaction, *_ in data:
        with torch.no_grad():
            codes, scores, _ = model.decode(interaction["item_id_list"], beam_size)
        for user, target in enumerate(interaction["item_id"].tolist()):
            beams = zip(map(tuple, codes[user].tolist()), scores[user].tolist())
            yield tuple(model.item_sid[target].tolist()), [(sid, score) for sid, score in beams if sid in catalogue]


@torch.no_grad()
def fused_pure_dense(model, interaction) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A model with a dense head, in eval mode: its item scores with the head, without it, and the head's
    log-probabilities alone, for one evaluation batch."""
    model.eval()
    fused = model.full_sort_predict(interaction)
    model.dense_head = False
    pure = model.full_sort_predict(interaction)
    model.dense_head = True
    return fused, pure, model.dense_log_probs(interaction[model.ITEM_SEQ])
