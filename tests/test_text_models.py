"""benchmarks/text_models.py: the text-only next-item check against a brute-force ranking, and SID figures that
agree with the SID stage's own collision report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import NAME
from recbole.data import data_preparation

from recbole_diffgm import Config, create_dataset
from recbole_diffgm.data.dataset import ItemTextDataset
from recbole_diffgm.data.sid import SIDSettings
from recbole_diffgm.data.sid.collisions import collision_report
from recbole_diffgm.data.sid.quantizers import make_quantizer

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def text_models(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import text_models

    return text_models


def test_the_text_check_ranks_every_item_by_cosine_with_the_recent_history(text_models, tiny_config):
    config = Config("SASRec", NAME, config_dict={**tiny_config, "train_neg_sample_args": None})
    dataset = create_dataset(config, ItemTextDataset)
    _, valid, _ = data_preparation(config, dataset)
    embeddings = np.random.default_rng(0).normal(size=(dataset.item_num - 1, 6)).astype(np.float32)
    found = text_models.text_next_item(valid, embeddings, history=2)

    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    ranks = []
    for interaction, _, _, positive_i in valid:
        for sequence, length, target in zip(interaction["item_id_list"].tolist(), interaction["item_length"].tolist(),
                                            positive_i.tolist()):
            query = unit[[item - 1 for item in sequence[max(0, length - 2):length]]].sum(axis=0)
            scores = unit @ (query / np.linalg.norm(query))
            ranks.append(1 + int((scores > scores[target - 1]).sum()))
    assert found["users"] == len(ranks)
    assert found["recall@10"] == pytest.approx(np.mean([rank <= 10 for rank in ranks]))
    assert found["ndcg@10"] == pytest.approx(np.mean([1 / math.log2(rank + 1) if rank <= 10 else 0 for rank in ranks]),
                                             abs=1e-6)
    assert 0 < found["recall@10"] < 1


def test_the_sid_figures_are_the_quantizers_codes_before_the_collision_policy(text_models, tiny_config):
    config = Config("SASRec", NAME, config_dict={**tiny_config, "n_digit": 4, "sid_quantizer": "opq"})
    embeddings = np.random.default_rng(1).normal(size=(300, 32)).astype(np.float32)  # 300 items, 8**4 SIDs
    figures = text_models.sid_figures(SIDSettings.from_config(config), embeddings)
    codes = make_quantizer("opq", SIDSettings.from_config(config).quantizer).quantize(embeddings)
    report = collision_report(codes)
    assert (figures["unique_sids"], figures["items_sharing"], figures["largest_group"]) == (
        report.unique_sids, report.colliding_items, report.largest_group)
    assert 0 < figures["quantization_error"] < 1  # unit vectors: 1 is a SID that says nothing
    assert figures["reassign_moved"] >= report.colliding_items - report.collision_groups
