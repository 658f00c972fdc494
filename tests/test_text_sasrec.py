"""TextSASRec: SASRec whose item vectors come from each item's text, so that an item that never trained scores
from its text (the dense-text baseline of the item cold-start protocol)."""

from __future__ import annotations

import pytest
import torch
from conftest import NAME
from recbole.data import data_preparation

from recbole_diffgm import Config, InputError, create_dataset, get_model, run_recbole_diffgm
from recbole_diffgm.model.text_sasrec import TextAdaptor

SMALL = {"hidden_size": 16, "inner_size": 32, "adaptor_experts": 2}


def build(tiny_config, **settings):
    config = Config("TextSASRec", NAME, config_dict={**tiny_config, **SMALL, **settings})
    train, valid, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return config, get_model("TextSASRec")(config, train._dataset), train, test


def test_an_items_vector_is_its_text_through_the_adaptor_and_nothing_per_item_is_learned(tiny_config):
    config, model, train, _ = build(tiny_config)
    text = train._dataset.item_text_embeddings(config)
    assert text.shape == (model.n_items, 384) and torch.equal(text[0], torch.zeros(384))
    assert torch.allclose(text[1:].norm(dim=1), torch.ones(model.n_items - 1), atol=1e-5)
    model.eval()
    adaptor = model.item_embedding.adaptor
    # By hand: the gate's softmax mix of each expert's W_e (x - b_e).
    gates = (text @ adaptor.gate.weight.T).softmax(dim=-1)
    experts = torch.stack([(text - adaptor.centres[e]) @ adaptor.projections[e] for e in range(2)], dim=1)
    expected = (gates[..., None] * experts).sum(dim=1)
    expected[0] = 0
    assert torch.allclose(model.item_embedding.weight, expected, atol=1e-6)
    assert torch.allclose(model.item_embedding(torch.tensor([[3, 0]])), expected[[3, 0]][None], atol=1e-6)
    # No parameter grows with the catalogue: the same count for 10 or 10,000 items.
    assert not any(parameter.shape[0] == model.n_items for parameter in model.parameters())


def test_two_items_with_one_text_get_one_vector_and_one_score(tiny_config):
    # The tiny catalogue's item 1 is a copy of item 0's text (conftest.write_tiny).
    config, model, train, test = build(tiny_config)
    dataset = train._dataset
    first, copy = (dataset.token2id(dataset.iid_field, token) for token in dataset.field2id_token["item_id"][1:3])
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(test))[0])
    assert torch.equal(scores[:, first], scores[:, copy])


def test_training_learns_the_next_item_from_text_vectors(tiny_config):
    result = run_recbole_diffgm("TextSASRec", NAME, config_dict={**tiny_config, **SMALL, "epochs": 30,
                                                                  "hidden_dropout_prob": 0.0, "attn_dropout_prob": 0.0,
                                                                  "adaptor_dropout": 0.0, "learning_rate": 0.01,
                                                                  "train_batch_size": 32})
    # The tiny data's next item is always the one after the last: learnable from text vectors alone.
    assert result["best_valid_result"]["recall@5"] >= 0.8


def test_textsasrec_refuses_sampled_negatives(tiny_config):
    config = Config("TextSASRec", NAME, config_dict={**tiny_config, **SMALL, "loss_type": "BPR",
                                                     "train_neg_sample_args": {"distribution": "uniform",
                                                                               "sample_num": 1}})
    train, _, _ = data_preparation(config, create_dataset(config))
    with pytest.raises(InputError, match="loss_type CE"):
        get_model("TextSASRec")(config, train._dataset)


def test_the_adaptor_is_the_gated_mix_of_whitening_experts():
    adaptor = TextAdaptor(text_dim=4, hidden_size=3, experts=2, dropout=0.0)
    with torch.no_grad():
        adaptor.centres.normal_()
        adaptor.gate.weight.normal_()
    text = torch.randn(5, 4)
    gates = adaptor.gate(text).softmax(dim=-1)
    by_hand = sum(gates[:, e, None] * ((text - adaptor.centres[e]) @ adaptor.projections[e]) for e in range(2))
    assert torch.allclose(adaptor(text), by_hand, atol=1e-6)
