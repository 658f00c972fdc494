"""The hybrids (``recbole_diffgm.model.hybrid``): a generative model with a dense item channel whose item vectors
come from what every item has (its SID, its text) and, for the training catalogue, an id vector of its own."""

from __future__ import annotations

import csv

import pandas as pd
import pytest
import torch
from conftest import NAME, fused_pure_dense, read_atomic
from recbole.data import data_preparation

from recbole_diffgm import Config, InputError, Recommender, create_dataset, get_model, run_recbole_diffgm

HYBRIDS = ["DigitClassifierHybrid", "DiffGMHybrid"]


def build(tiny_config, model_name: str = "DigitClassifierHybrid", **settings):
    config = Config(model_name, NAME, config_dict={**tiny_config, "dropout": 0.0, "adaptor_dropout": 0.0, **settings})
    train, valid, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return get_model(model_name)(config, train._dataset), train, valid


def test_without_id_vectors_an_item_is_its_sid_and_its_text(tiny_config):
    # Items 1 and 2 of the tiny catalogue have the same text, so (no collision policy) the same SID.
    model, *_ = build(tiny_config, sid_collision="keep", hybrid_item_ids=False)
    same = [item for item in range(1, model.n_items) if torch.equal(model.item_sid[item], model.item_sid[1])]
    assert len(same) == 2 and torch.equal(model.item_text[same[0]], model.item_text[same[1]])
    vectors = model.dense_item_vectors()
    assert torch.equal(vectors[same[0]], vectors[same[1]])
    assert len(vectors[1:].unique(dim=0)) == model.n_items - 2  # every other item a vector of its own

    with_ids, *_ = build(tiny_config, sid_collision="keep")
    vectors = with_ids.dense_item_vectors()
    assert not torch.equal(vectors[same[0]], vectors[same[1]])  # each has an id vector now


def test_a_cold_item_has_no_id_vector_and_is_scored_from_its_sid_and_text(tiny_config):
    model, _, valid = build(tiny_config, cold_items=0.25, cold_items_seed=7)
    cold = model.item_text.new_zeros(model.n_items, dtype=torch.bool)
    cold[train_cold := valid._dataset.cold_items.nonzero()[:, 0]] = True
    assert len(train_cold) > 0 and (model.id_rows[cold] == 0).all() and (model.id_rows[1:][~cold[1:]] > 0).all()
    # Its id rows are the training catalogue's, one each: the table holds no row for a cold item.
    assert model.item_id_embedding.num_embeddings == model.n_items - len(train_cold)
    assert not model.item_id_embedding.weight[0].any()  # the row of the others: zero
    interaction = next(iter(valid))[0]
    model.eval()
    with torch.no_grad():
        dense = model.dense_log_probs(interaction[model.ITEM_SEQ])
        assert dense[:, cold].isfinite().all()  # reachable
        item = int(train_cold[0])
        before = model.dense_item_vectors()[item].clone()
        model.item_text[item] = model.item_text[item].flip(0)  # another text: another vector
        assert not torch.allclose(model.dense_item_vectors()[item], before)


@pytest.mark.parametrize("model_name", HYBRIDS)
def test_the_encoder_reads_the_history_items_texts_and_the_fused_score_adds_the_dense_head(tiny_config, model_name):
    model, train, valid = build(tiny_config, model_name, dense_weight=0.5)
    batch = next(iter(train))
    model.generative_loss(batch).backward()  # the generative loss alone: the history's items enter with their text
    assert model.text_adaptor.projections.grad.abs().sum() > 0 and model.item_id_embedding.weight.grad.abs().sum() > 0

    interaction = next(iter(valid))[0]
    fused, pure, dense = fused_pure_dense(model, interaction)
    items = torch.arange(1, model.n_items)
    assert torch.allclose(fused[:, items], pure[:, items] + 0.5 * dense[:, items].double(), atol=1e-4)


def test_a_hybrid_without_its_dense_head_is_named(tiny_config):
    with pytest.raises(InputError, match="dense_head false is --model=DigitClassifier$"):
        build(tiny_config, dense_head=False)


def test_an_item_added_after_training_is_recommended_from_its_sid_and_text(tiny_config):
    result = run_recbole_diffgm("DigitClassifierHybrid", NAME, config_dict={**tiny_config, "epochs": 1})
    item_file = f"{tiny_config['data_path']}/{NAME}/{NAME}.item"
    items = read_atomic(item_file)
    new = items.iloc[[5]].assign(**{"item_id:token": "NEWITEM"})  # another item's text under a new id
    pd.concat([items, new]).to_csv(item_file, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    recommender = Recommender(result["model_file"])
    model = recommender.model
    added = recommender.dataset.token2id("item_id", "NEWITEM")
    assert added == model.n_items - 1 and model.id_rows[added] == 0  # the trained id table, no row for it
    history = [recommender.dataset.id2token("item_id", item) for item in (3, 4)]
    ranked = [rec.item_id for rec in recommender.recommend(history, top_k=model.n_items - 1, exclude_history=False)]
    assert "NEWITEM" in ranked
