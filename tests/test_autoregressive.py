"""ARGM and TIGER: left-to-right beam search (constrained by a trie or not), teacher forcing, item scores."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import NAME
from recbole.data import data_preparation
from test_diffgm import best_sid_accuracy, history_blind_accuracy, train_steps

from recbole_diffgm import Config, create_dataset, get_model
from recbole_diffgm.model.decoding import PrefixTrie, autoregressive_beam_search


def toy_next_log_probs(n_digit: int, n_codes: int):
    """A left-to-right model over ``n_digit`` digits whose next-digit distribution depends on the prefix."""
    generator = torch.Generator().manual_seed(0)
    tables = {prefix: torch.randn(n_codes, generator=generator).log_softmax(-1)
              for t in range(n_digit) for prefix in itertools.product(range(n_codes), repeat=t)}

    def next_log_probs(prefixes):
        return torch.stack([torch.stack([tables[tuple(p.tolist())] for p in user]) for user in prefixes])

    def score(sid):
        return sum(tables[tuple(sid[:t])][sid[t]].item() for t in range(n_digit))

    return next_log_probs, score


def test_a_covering_beam_equals_brute_force():
    next_log_probs, score = toy_next_log_probs(3, 3)
    expected = sorted(((score(sid), sid) for sid in itertools.product(range(3), repeat=3)), reverse=True)
    codes, scores, fallback = autoregressive_beam_search(next_log_probs, 1, 3, beam_size=27)
    assert [tuple(c) for c in codes[0].tolist()] == [sid for _, sid in expected]
    torch.testing.assert_close(scores[0], torch.tensor([s for s, _ in expected]))
    torch.testing.assert_close(fallback[0, 0], next_log_probs(torch.zeros(1, 1, 0, dtype=torch.long))[0, 0])


def test_the_constrained_beam_emits_only_catalogue_sids_and_finds_their_best():
    next_log_probs, score = toy_next_log_probs(3, 4)
    catalogue = torch.tensor([[0, 1, 2], [0, 1, 3], [2, 0, 0], [3, 3, 1], [1, 2, 0]])
    codes, scores, _ = autoregressive_beam_search(next_log_probs, 1, 3, beam_size=8, trie=PrefixTrie(catalogue, 4))
    valid = scores[0].isfinite()
    assert valid.sum() == len(catalogue)  # every catalogue SID, and nothing else, scores finitely
    assert {tuple(c) for c in codes[0][valid].tolist()} == {tuple(c) for c in catalogue.tolist()}
    best = sorted(catalogue.tolist(), key=score, reverse=True)
    assert [list(c) for c in codes[0][valid].tolist()] == best


def test_the_trie_knows_exactly_the_catalogue_prefixes():
    catalogue = torch.tensor([[0, 1, 2], [0, 1, 3], [2, 0, 0]])
    trie = PrefixTrie(catalogue, 4)
    allowed, child = trie.children(0, torch.tensor([0]))
    assert allowed[0].tolist() == [True, False, True, False]
    allowed, _ = trie.children(1, child[0, :1])  # below digit 0 = 0: only 1
    assert allowed[0].tolist() == [False, True, False, False]


@pytest.fixture(params=["ARGM", "TIGER"])
def autoregressive(request, tiny_config):
    overrides = {"sid_quantizer": "rq_kmeans", "n_digit": 2} if request.param == "TIGER" else {}
    config = Config(request.param, NAME, config_dict={**tiny_config, **overrides, "head_dim": None, "n_head": 2,
                                                       "encoder_n_layer": 1})
    train, valid, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    return get_model(request.param)(config, train._dataset), next(iter(train)), next(iter(valid))[0]


@pytest.mark.parametrize("model_name", ["ARGM", "TIGER"])
def test_teacher_forcing_learns_the_next_item_of_each_history(tiny_config, model_name):
    """As ``test_diffgm.test_training_learns_the_next_item_of_each_history``: 120 steps on one batch put the target's
    SID first for 4 rows in 5 (a model blind to the history: at most 1 in 10), the loss below half its chance level."""
    overrides = {"sid_quantizer": "rq_kmeans", "n_digit": 2} if model_name == "TIGER" else {}
    config = Config(model_name, NAME, config_dict={**tiny_config, **overrides, "head_dim": None, "n_head": 2,
                                                   "encoder_n_layer": 1, "dropout": 0.0})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model(model_name)(config, train._dataset)
    batch = next(iter(train))
    assert history_blind_accuracy(model, batch) <= 0.1 and best_sid_accuracy(model, batch) <= 0.1
    losses = train_steps(model, batch, steps=120)
    assert losses[-1] < 0.5 * math.log(model.n_codes)
    assert best_sid_accuracy(model, batch) >= 0.8


def test_the_decoder_is_causal(autoregressive):
    model, batch, _ = autoregressive
    model.eval()
    memory_kv, mask = model.encode(batch[model.ITEM_SEQ][:4])
    prefix = model.item_sid[batch[model.POS_ITEM_ID][:4]][:, None, :-1]  # teacher forcing: all but the last digit
    changed = prefix.clone()
    changed[..., -1] = (changed[..., -1] + 1) % model.n_codes
    first = model.decode_slots(model.decoder_inputs(prefix), memory_kv, mask, causal=True)
    second = model.decode_slots(model.decoder_inputs(changed), memory_kv, mask, causal=True)
    torch.testing.assert_close(first[..., :-1, :], second[..., :-1, :])  # earlier digits never see later ones
    assert not torch.allclose(first[..., -1, :], second[..., -1, :])


def test_every_item_is_scored_and_tiger_beams_are_catalogue_items(autoregressive):
    model, _, interaction = autoregressive
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
        codes, beam_scores, _ = model.decode(interaction[model.ITEM_SEQ], 16)
    assert scores.shape == (len(interaction), model.n_items) and scores[:, 1:].isfinite().all()
    if model.trie is not None:  # TIGER: one item per SID, and the beam only reaches catalogue SIDs
        assert len(model.item_sid[1:].unique(dim=0)) == model.n_items - 1
        catalogue = {tuple(sid) for sid in model.item_sid[1:].tolist()}
        assert all(tuple(c) in catalogue for c in codes[beam_scores.isfinite()].tolist())


def test_trie_lookup_names_each_catalogue_sid_once_and_rejects_others():
    catalogue = torch.tensor([[0, 1, 2], [0, 1, 3], [2, 0, 0], [0, 1, 2]])
    trie = PrefixTrie(catalogue, 4)
    leaves = trie.lookup(catalogue)
    assert trie.n_sids == 3 and leaves[0] == leaves[3] and len(set(leaves.tolist())) == 3
    assert trie.lookup(torch.tensor([[0, 1, 1], [3, 3, 3], [2, 0, 1]])).tolist() == [-1, -1, -1]


def test_tiger_trains_and_decodes_on_its_default_rq_vae_sids(tiny_config):
    # TIGER's own quantizer (RQ-VAE, as its default config), with its disambiguation digit: every item one SID.
    config = Config("TIGER", NAME, config_dict={**tiny_config, "head_dim": None, "n_head": 2, "encoder_n_layer": 1,
                                                "n_digit": 3, "rq_vae": {"epochs": 20, "hidden_sizes": [32],
                                                                         "latent_dim": 8}})
    assert config["sid_quantizer"] == "rq_vae" and config["sid_collision"] == "disambiguate"
    dataset = create_dataset(config)
    train, valid, _ = data_preparation(config, dataset)
    assert dataset.item_sid.shape[1] == 4  # 3 RQ-VAE digits and the disambiguation digit
    torch.manual_seed(0)
    model = get_model("TIGER")(config, train._dataset)
    assert len(model.item_sid[1:].unique(dim=0)) == model.n_items - 1
    losses = train_steps(model, next(iter(train)))
    assert losses[-1] < losses[0] - 0.1
    model.eval()
    with torch.no_grad():
        codes, beam_scores, _ = model.decode(next(iter(valid))[0][model.ITEM_SEQ], 16)
    catalogue = {tuple(sid) for sid in model.item_sid[1:].tolist()}
    assert all(tuple(c) in catalogue for c in codes[beam_scores.isfinite()].tolist())
