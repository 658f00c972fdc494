"""The shipped amazon-beauty data as RecBole loads it with properties/dataset/amazon-beauty.yaml."""

from __future__ import annotations

import pytest
from conftest import BEAUTY, read_atomic

from recbole_diffgm.config import DATASET_DIR, Config
from recbole_diffgm.quick_start import dataset_summary
from recbole_diffgm.utils import create_dataset


@pytest.fixture(scope="module")
def beauty(tmp_path_factory):
    config = Config("SASRec", BEAUTY, config_dict={"checkpoint_dir": str(tmp_path_factory.mktemp("saved"))})
    return config, create_dataset(config)


def test_config_comes_from_the_plugin_yaml(beauty):
    config, _ = beauty
    assert config["MAX_ITEM_LIST_LENGTH"] == 50
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["order"] == "TO"
    assert config["eval_args"]["mode"] == {"valid": "full", "test": "full"}
    assert config["topk"] == [5, 10] and config["valid_metric"] == "NDCG@10"
    assert config["loss_type"] == "CE" and config["train_neg_sample_args"]["distribution"] == "none"
    assert config["data_path"] == str(DATASET_DIR / BEAUTY)


def test_counts_match_the_published_5_core(beauty):
    _, dataset = beauty
    assert dataset_summary(dataset) == "amazon-beauty: 22,363 users, 12,101 items, 198,502 interactions"
    assert set(dataset.item_feat.columns) == {"item_id", "title", "brand", "categories", "price"}


def test_leave_one_out_targets_are_each_users_last_rows_in_file_order(beauty):
    # Same-day reviews tie on timestamp (43.5% of users' last two items), so only a stable sort keeps
    # the file order that defines the targets. Checked for every user, with the whole test history.
    _, dataset = beauty
    inter = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.inter")
    sequences = inter.groupby("user_id:token", sort=False)["item_id:token"].agg(list).to_dict()
    _, valid, test = dataset.build()

    def targets(split):
        users = dataset.id2token("user_id", split.inter_feat["user_id"].numpy())
        items = dataset.id2token("item_id", split.inter_feat["item_id"].numpy())
        return dict(zip(users, items))

    test_targets, valid_targets = targets(test), targets(valid)
    assert len(test_targets) == len(valid_targets) == len(sequences) == 22363
    assert test_targets == {user: items[-1] for user, items in sequences.items()}
    assert valid_targets == {user: items[-2] for user, items in sequences.items()}

    users = dataset.id2token("user_id", test.inter_feat["user_id"].numpy())
    lengths = test.inter_feat["item_length"].tolist()
    histories = test.inter_feat["item_id_list"].numpy()
    for user, length, history in zip(users, lengths, histories):
        assert list(dataset.id2token("item_id", history[:length])) == sequences[user][:-1][-50:], user
