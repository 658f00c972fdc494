"""DiffGM: OCN views, CPD beam search and item-level scoring, on small real data."""

from __future__ import annotations

import itertools
import logging
import math
import socket
from pathlib import Path

import pytest
import torch
from conftest import NAME, catalogue_beams, fused_pure_dense
from recbole.data import data_preparation

from recbole_diffgm import (
    Config,
    InputError,
    create_dataset,
    get_model,
    get_trainer,
    load_data_and_model,
    run_recbole_diffgm,
)
from recbole_diffgm.evaluation import group_ranks, merge_beams, ranked_sids
from recbole_diffgm.model.decoding import MASK, PrefixTrie, SIDPatterns, cpd_beam_search
from recbole_diffgm.model.diffgm import DiffGM


def test_training_rows_are_next_items_without_negative_samples(tiny_config):
    config = Config("DiffGM", NAME, config_dict=tiny_config)
    assert config["train_neg_sample_args"]["distribution"] == "none"
    train, _, _ = data_preparation(config, create_dataset(config))
    rows = sum(len(batch) for batch in train)
    assert rows == len(train._dataset)  # one row per training prefix; negative sampling would add rows
    assert "label" not in next(iter(train))


def train_steps(model, batch, steps: int = 20) -> list[float]:
    """The loss at each of ``steps`` AdamW steps on one batch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = model.calculate_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def best_sid_accuracy(model, batch, beam_size: int = 16) -> float:
    """The share of ``batch``'s rows whose target SID is the model's best decoded SID (``decode``'s first beam)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        codes, _, _ = model.decode(batch[model.ITEM_SEQ], beam_size)
    model.train(was_training)
    return (codes[:, 0] == model.item_sid[batch[model.POS_ITEM_ID]]).all(dim=-1).float().mean().item()


def history_blind_accuracy(model, batch) -> float:
    """The best ``best_sid_accuracy`` of a model that ignores the history: the most frequent target SID's share."""
    _, counts = model.item_sid[batch[model.POS_ITEM_ID]].unique(dim=0, return_counts=True)
    return counts.max().item() / len(batch)


def test_training_learns_the_next_item_of_each_history(tiny_config):
    """In the tiny data each history's next item is the one after its last (``conftest.write_tiny``): learnable from
    the history only. 120 steps on one batch must put the target's SID first for 4 rows in 5, where a model blind to
    the history reaches at most 1 in 10, and the loss below half its chance level (ln of the codes per digit)."""
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "dropout": 0.0})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model("DiffGM")(config, train._dataset)
    batch = next(iter(train))
    assert history_blind_accuracy(model, batch) <= 0.1 and best_sid_accuracy(model, batch) <= 0.1
    losses = train_steps(model, batch, steps=120)
    assert losses[-1] < 0.5 * math.log(model.n_codes)
    assert best_sid_accuracy(model, batch) >= 0.8


def constant_denoiser(model, confidence: list[float]):
    """Make ``model`` predict code 0 with probability ``confidence[s]`` in slot ``s``, whatever it sees."""
    probs = torch.stack([torch.cat([c[None], (1 - c).expand(7) / 7]) for c in torch.tensor(confidence)])
    model.denoise = lambda codes, kv, mask, every_slot=False: probs.log().expand(*codes.shape, 8)


def test_guided_views_are_nested_and_least_confident_first(tiny):
    model, _, _ = tiny
    constant_denoiser(model, [0.9, 0.2, 0.5, 0.7])  # least confident first: slot 1, 2, 3, 0
    views = model.masking_views(torch.zeros(2, 4, dtype=torch.long), None, None)
    expected = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(views, expected.expand(2, 4, 4))
    assert model.training  # the no-grad probe does not leave the model in eval mode
    model.guided_select = "most"
    assert model.guided_order(torch.zeros(2, 4, dtype=torch.long), None, None).tolist() == [[0, 3, 2, 1]] * 2


def test_ocn_views_are_evenly_spaced_nested_and_end_all_hidden(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "n_digit": 8, "sent_emb_pca": 16, "ocn_views": 3})
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset)
    constant_denoiser(model, [0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6])  # least confident: 0, 2, 4, 6, 7, 5, 3, 1
    views = model.masking_views(torch.zeros(2, 8, dtype=torch.long), None, None)
    assert views.shape == (2, 3, 8) and views.sum(-1).tolist() == [[3, 6, 8]] * 2
    assert views[0, 0].nonzero()[:, 0].tolist() == [0, 2, 4]  # the three least confident first
    assert (views[:, 1:] >= views[:, :-1]).all()
    with pytest.raises(InputError, match="ocn_views must be an integer from 1 to n_digit \\(8\\), got 9"):
        get_model("DiffGM")(Config("DiffGM", NAME, config_dict={**tiny_config, "n_digit": 8, "sent_emb_pca": 16,
                                                                "ocn_views": 9}), train._dataset)


def test_entropy_confidence_can_order_slots_unlike_max_probability(tiny):
    model, _, _ = tiny
    # Slot 0: max 0.5, the rest spread thin (high entropy); slot 1: 0.4, 0.4, then thin (lower entropy).
    probs = torch.tensor([[0.5] + [0.5 / 7] * 7, [0.4, 0.4] + [0.2 / 6] * 6]).log()
    model.denoise = lambda codes, kv, mask, every_slot=False: probs.expand(*codes.shape, 8)
    target = torch.zeros(1, 2, dtype=torch.long)
    model.n_digit = 2
    assert model.guided_order(target, None, None).tolist() == [[1, 0]]  # msp: slot 1 (0.4) is less confident
    model.guided_confidence = "entropy"
    assert model.guided_order(target, None, None).tolist() == [[0, 1]]  # entropy: slot 0 is less confident


def test_guided_refresh_reprobes_with_the_hidden_slots(tiny):
    """The release's refresh (``guided_refresh_each_step``, genrec/models/DIFF_GRM/model.py of DiffGRM): hide the
    least confident slot, probe again with the slots hidden so far and the rest showing their codes, hide the least
    confident of the still visible slots (outputs the loss never trains), and so on. The release's first probe
    shows every slot; this one hides every slot, as OCN's probe without refresh: a deviation, which here would give
    3, 0, 1, 2. By hand on 4 slots: a hidden slot's confidence is ``hidden[s]``, a visible one's ``visible[s]``, less
    0.2 while the slot before it (cyclically) is hidden. Every slot hidden: slot 1 (0.3) first. Probe {1}: visible
    0: 0.9, 2: 0.85 - 0.2, 3: 0.75, so slot 2. Probe {1, 2}: 0: 0.9, 3: 0.75 - 0.2, so slot 3; then slot 0. Without
    refresh, or reading the hidden slots' outputs: 1, 2, 0, 3."""
    model, _, _ = tiny
    hidden, visible = [0.6, 0.3, 0.5, 0.7], [0.9, 0.8, 0.85, 0.75]
    probes = []

    def denoise(codes, memory_kv, memory_mask, every_slot=False):
        masked = (codes == MASK)[0, 0].tolist()
        probes.append({slot for slot in range(4) if masked[slot]})
        confidence = torch.tensor([hidden[slot] if masked[slot] else visible[slot] - 0.2 * masked[slot - 1]
                                   for slot in range(4)])
        probs = torch.cat([confidence[:, None], ((1 - confidence) / 7)[:, None].expand(4, 7)], dim=1)
        log_probs = probs.log().expand(*codes.shape, 8).clone()
        if not every_slot:  # as DiffGM.denoise: visible slots get no output
            log_probs[codes != MASK] = float("-inf")
        return log_probs

    model.denoise, model.guided_refresh = denoise, True
    order = model.guided_order(torch.zeros(1, 4, dtype=torch.long), None, None)
    assert probes == [{0, 1, 2, 3}, {1}, {1, 2}]
    assert order.tolist() == [[1, 2, 3, 0]]


def test_sequential_paths_are_nested_random_orders(tiny):
    model, _, _ = tiny
    model.masking_strategy, model.sequential_paths = "sequential", 3
    views = model.masking_views(torch.zeros(5, 4, dtype=torch.long), None, None).view(5, 3, 4, 4)
    assert torch.equal(views.sum(-1), torch.arange(1, 5).expand(5, 3, 4))  # view t of a path hides t + 1 slots
    assert (views[:, :, 1:] >= views[:, :, :-1]).all()  # nested along each path


def test_loss_reductions_follow_the_paper_and_the_released_code(tiny):
    model, batch, _ = tiny
    model.eval()
    torch.manual_seed(0)
    view_mean = model.calculate_loss(batch)
    model.loss_reduction = "token_mean"
    token_mean = model.calculate_loss(batch)
    # Recompute both from the per-token losses of the same (deterministic, guided) views.
    target = model.item_sid[batch[model.POS_ITEM_ID]]
    memory_kv, memory_mask = model.encode(batch[model.ITEM_SEQ])
    views = model.masking_views(target, memory_kv, memory_mask)
    log_probs = model.denoise(target[:, None].expand_as(views).masked_fill(views, MASK), memory_kv, memory_mask)
    labels = target[:, None].expand_as(views)
    smoothing = model.label_smoothing  # label-smoothed cross-entropy by hand, on the hidden slots only
    tokens = -(1 - smoothing) * log_probs.gather(-1, labels[..., None])[..., 0] - smoothing * log_probs.mean(-1)
    tokens = torch.where(views, tokens, 0.0)
    torch.testing.assert_close(view_mean, ((tokens * views).sum(-1) / views.sum(-1)).mean())
    torch.testing.assert_close(token_mean, (tokens * views).sum() / views.sum())
    assert not torch.isclose(view_mean, token_mean)


def toy_denoiser(n_digit: int = 2, n_codes: int = 3):
    """A denoiser over ``n_digit`` slots x ``n_codes`` codes whose log-probabilities depend on what is visible."""
    generator = torch.Generator().manual_seed(0)
    tables = {state: torch.randn(n_digit, n_codes, generator=generator).log_softmax(-1)
              for state in itertools.product([MASK, *range(n_codes)], repeat=n_digit)}

    def denoise(codes):
        return torch.stack([torch.stack([tables[tuple(row.tolist())] for row in user]) for user in codes])

    return tables, denoise


def path_score(tables, sid, order):
    """The sum of the conditional log-probabilities of filling ``sid``'s slots in ``order``."""
    state, score = [MASK] * len(sid), 0.0
    for slot in order:
        score += tables[tuple(state)][slot, sid[slot]].item()
        state[slot] = sid[slot]
    return score


def every_sid(n_digit: int = 2, n_codes: int = 3) -> SIDPatterns:
    return SIDPatterns(torch.tensor(list(itertools.product(range(n_codes), repeat=n_digit))), n_codes)


# 8 of the 27 SIDs of 3 digits x 3 codes, sorted: partial SIDs such as (0, 0, MASK) or (MASK, 1, 0) lead to
# one SID, others such as (1, MASK, 0) to none.
SPARSE = [(0, 0, 1), (0, 1, 0), (0, 2, 2), (1, 1, 1), (2, 0, 0), (2, 0, 2), (2, 2, 1), (2, 2, 2)]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("catalogue", [list(itertools.product(range(3), repeat=2)), SPARSE])
def test_cpd_with_a_covering_beam_equals_brute_force(catalogue, weighted):
    """Every catalogue SID exactly once, nothing else, each scored over every fill order: its best order (the
    beam merges the copies of a partial SID to the best), or with ``weighted`` the log of the summed probability
    of every order (each merge sums its copies)."""
    n_digit = len(catalogue[0])
    tables, denoise = toy_denoiser(n_digit)
    merge = (lambda scores: math.log(sum(map(math.exp, scores)))) if weighted else max
    expected = sorted(((merge([path_score(tables, sid, order) for order in itertools.permutations(range(n_digit))]),
                        sid) for sid in catalogue), reverse=True)
    codes, scores, first = cpd_beam_search(denoise, SIDPatterns(torch.tensor(catalogue), 3), 1, beam_size=64,
                                           weighted=weighted)
    assert [tuple(c) for c in codes[0].tolist()] == [sid for _, sid in expected]
    torch.testing.assert_close(scores[0], torch.tensor([score for score, _ in expected]))
    torch.testing.assert_close(first[0], tables[(MASK,) * n_digit])


def test_a_narrow_beam_keeps_the_best_distinct_legal_partial_sids_at_every_step():
    """Each step keeps the ``beam_size`` best distinct partial SIDs that some catalogue SID completes, each scored by
    its best fill order from the states kept before: a by-hand beam over explicit partial SIDs gives the same SIDs."""
    tables, denoise = toy_denoiser(3)
    legal = lambda state: any(all(c in (MASK, code) for c, code in zip(state, sid)) for sid in SPARSE)
    kept = {(MASK,) * 3: 0.0}
    for _ in range(3):
        reached = {}
        for state, score in kept.items():
            for slot, code in itertools.product(range(3), range(3)):
                child = tuple(code if index == slot else c for index, c in enumerate(state))
                if state[slot] == MASK and legal(child):
                    reached[child] = max(reached.get(child, float("-inf")), score + tables[state][slot, code].item())
        kept = dict(sorted(reached.items(), key=lambda item: -item[1])[:4])
    codes, scores, _ = cpd_beam_search(denoise, SIDPatterns(torch.tensor(SPARSE), 3), 1, beam_size=4)
    assert [tuple(c) for c in codes[0].tolist()] == list(kept)
    torch.testing.assert_close(scores[0], torch.tensor(list(kept.values())))


def test_greedy_last_step_completes_each_beam_with_its_best_code():
    tables, denoise = toy_denoiser()
    expected = {}
    for slot, code in itertools.product(range(2), range(3)):  # a beam of 6 keeps every first step
        state = [MASK, MASK]
        state[slot] = code
        last = tables[tuple(state)][1 - slot]
        state[1 - slot] = last.argmax().item()
        score = tables[(MASK, MASK)][slot, code].item() + last.max().item()
        expected[tuple(state)] = max(expected.get(tuple(state), float("-inf")), score)  # two beams, one SID: merged
    expected = sorted(((score, sid) for sid, score in expected.items()), reverse=True)
    codes, scores, _ = cpd_beam_search(denoise, every_sid(), 1, beam_size=6, greedy_last_step=True)
    assert [tuple(c) for c in codes[0].tolist()] == [sid for _, sid in expected]
    torch.testing.assert_close(scores[0], torch.tensor([score for score, _ in expected]))


def test_a_fixed_slot_order_equals_brute_force_in_that_order():
    tables, denoise = toy_denoiser()
    paths = sorted(((path_score(tables, sid, (1, 0)), sid) for sid in itertools.product(range(3), repeat=2)),
                   reverse=True)
    codes, scores, _ = cpd_beam_search(denoise, every_sid(), 1, beam_size=9, slot_order=torch.tensor([1, 0]))
    assert [tuple(c) for c in codes[0].tolist()] == [sid for _, sid in paths]
    torch.testing.assert_close(scores[0], torch.tensor([score for score, _ in paths]))


def test_generated_lists_drop_illegal_sids_and_duplicates():
    catalogue = torch.tensor([[1, 2], [2, 0], [3, 3]])  # sorted: the trie's leaves in order
    trie = PrefixTrie(catalogue, n_codes=4)
    codes = torch.tensor([[[1, 2], [1, 2], [3, 3], [0, 1], [3, 3]]])
    scores = torch.tensor([[-1.0, -1.5, -2.0, -2.5, -3.0]])
    leaves = trie.lookup(codes)
    assert leaves.tolist() == [[0, 0, 2, -1, 2]]  # (0, 1) belongs to no item
    [(simple, simple_scores)] = ranked_sids(merge_beams(leaves, scores, trie.n_sids, "simple"), catalogue, 10)
    assert simple.tolist() == [[1, 2], [3, 3]] and simple_scores.tolist() == [-1.0, -2.0]
    [(weighted, weighted_scores)] = ranked_sids(merge_beams(leaves, scores, trie.n_sids, "weighted"), catalogue, 10)
    assert weighted.tolist() == [[1, 2], [3, 3]]
    torch.testing.assert_close(weighted_scores, torch.stack([scores[0, :2].logsumexp(0), scores[0, [2, 4]].logsumexp(0)]))
    [(top_one, _)] = ranked_sids(merge_beams(leaves, scores, trie.n_sids, "simple"), catalogue, 1)
    assert top_one.tolist() == [[1, 2]]


def test_generate_without_dedup_keeps_every_legal_beam_in_order(two_digit):
    model, interaction = two_digit
    model.beam_size = 32
    histories = interaction[model.ITEM_SEQ][:4]
    torch.manual_seed(0)
    codes, scores, _ = model.decode(histories, model.beam_size)
    for user, (kept, kept_scores) in enumerate(model.generate(histories, top_k=20, dedup="none")):
        legal = [(tuple(c), s) for c, s in zip(codes[user].tolist(), scores[user].tolist())
                 if model.sid_trie.lookup(torch.tensor(c)) >= 0][:20]
        assert [tuple(c) for c in kept.tolist()] == [c for c, _ in legal]
        assert kept_scores.tolist() == [s for _, s in legal]


def test_every_item_scores_the_all_masked_log_probability_of_its_sid(tiny):
    """One-pass decoding with a beam as wide as the catalogue: an item's score is the sum of its SID's digits'
    log-probabilities in the all-masked pass (up to the popularity tie-break, below 1e-5), the padding item's
    ``-inf``. ``predict`` gives each (user, candidate) pair that score, each user's row repeated with several
    candidates in one batch, as RecBole's sampled evaluation asks."""
    model, _, interaction = tiny
    model.eval()
    model.decode_mode, model.beam_size = "one_pass", len(model.distinct_sids)
    users = torch.arange(len(interaction)).repeat_interleave(5)
    candidates = torch.randint(1, model.n_items, (len(users),), generator=torch.Generator().manual_seed(0))
    pairs = interaction[users]
    pairs.interaction["item_id"] = candidates
    with torch.no_grad():
        memory_kv, memory_mask = model.encode(interaction[model.ITEM_SEQ])
        all_masked = model.denoise(torch.full((len(interaction), 1, model.n_digit), MASK), memory_kv, memory_mask)[:, 0]
        scores, predicted = model.full_sort_predict(interaction), model.predict(pairs)
    sid = model.item_sid[1:]
    expected = torch.stack([all_masked[:, digit, sid[:, digit]] for digit in range(model.n_digit)]).sum(0).double()
    assert scores.shape == (len(interaction), model.n_items) and scores[:, 0].isneginf().all()
    torch.testing.assert_close(scores[:, 1:], expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(predicted, expected[users, candidates - 1], rtol=0, atol=1e-5)


@pytest.fixture
def two_digit(tiny_config):
    """The tiny model with 2-digit SIDs: 64 SIDs for 48 items."""
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "n_digit": 2})
    train, valid, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)  # the untrained model's beams, the same whichever tests ran before
    return get_model("DiffGM")(config, train._dataset).eval(), next(iter(valid))[0]


def test_generate_returns_distinct_catalogue_sids(two_digit):
    model, interaction = two_digit
    model.beam_size = 64
    catalogue = {tuple(sid) for sid in model.item_sid[1:].tolist()}
    lists = model.generate(interaction[model.ITEM_SEQ], top_k=10)
    assert len(lists) == len(interaction)
    for codes, scores in lists:
        sids = [tuple(c) for c in codes.tolist()]
        assert len(sids) == 10 and len(set(sids)) == 10 and set(sids) <= catalogue
        assert torch.equal(scores, scores.sort(descending=True).values)


def test_beam_hits_rank_first_and_share_their_beam_score(two_digit):
    model, interaction = two_digit
    model.beam_size = 128  # 8^2 SIDs x 2 fill orders: every path is kept, every item's SID is reached
    with torch.no_grad():
        codes, beam_scores, _ = model.decode(interaction["item_id_list"], 128)
        scores = model.full_sort_predict(interaction)
    # An item's score is the best beam score of its SID, up to the popularity tie-break (< 1e-4).
    best = {tuple(c): s for c, s in zip(codes[0].tolist()[::-1], beam_scores[0].tolist()[::-1])}
    for item in range(1, model.n_items):
        expected = best[tuple(model.item_sid[item].tolist())]
        assert scores[0, item].item() == pytest.approx(expected, abs=1e-4)


def test_unreached_items_rank_below_every_beam_hit(two_digit):
    model, interaction = two_digit
    model.beam_size = 8  # reaches some of the 48 items' SIDs among 64, not all
    with torch.no_grad():
        codes, _, _ = model.decode(interaction["item_id_list"], model.beam_size)
        scores = model.full_sort_predict(interaction)
    checked = 0
    for user in range(len(interaction)):
        decoded = {tuple(c) for c in codes[user].tolist()}
        hit = torch.tensor([tuple(sid) in decoded for sid in model.item_sid.tolist()])
        hit[0] = False
        if hit.any() and (~hit[1:]).any():
            assert scores[user, hit].min() > scores[user, 1:][~hit[1:]].max()
            checked += 1
    assert checked > 0


def test_scores_do_not_read_the_target_or_its_features(tiny):
    model, _, interaction = tiny
    model.eval()
    with torch.no_grad():
        before = model.full_sort_predict(interaction)
        interaction.interaction["item_id"] = torch.flip(interaction["item_id"], [0])
        for field in ("title", "price"):
            interaction.interaction[field] = torch.zeros_like(interaction[field])
        assert torch.equal(model.full_sort_predict(interaction), before)


def test_an_end_to_end_run_validates_and_tests_with_their_own_beams(tiny_config, monkeypatch):
    widths = []
    original = DiffGM.decode
    monkeypatch.setattr(DiffGM, "decode", lambda self, seq, beam: widths.append(beam) or original(self, seq, beam))
    result = run_recbole_diffgm("DiffGM", NAME, config_dict={**tiny_config, "epochs": 2, "valid_beam_size": 16,
                                                             "test_beam_size": 64,
                                                             "valid_metric_weights": {"ndcg@5": 0.8, "recall@5": 0.2}})
    assert set(result["test_result"]) == {"recall@5", "ndcg@5"}
    valid = result["best_valid_result"]
    assert result["best_valid_score"] == pytest.approx(0.8 * valid["ndcg@5"] + 0.2 * valid["recall@5"])
    assert result["model_file"].endswith(".pth")
    assert 16 in widths and widths[-1] == 64  # validation during fit, then the test

    # The saved run reloads (weights and SIDs) and gives the same test metrics.
    config, model, _, _, _, test_data = load_data_and_model(result["model_file"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    assert trainer.evaluate(test_data, load_best_model=False) == result["test_result"]


def test_validation_starts_at_eval_start_epoch(tiny_config, caplog):
    with caplog.at_level(logging.INFO):
        run_recbole_diffgm("DiffGM", NAME, config_dict={**tiny_config, "epochs": 3, "eval_start_epoch": 2})
    assert "epoch 0 training" in caplog.text and "epoch 2 training" in caplog.text
    assert "epoch 0 evaluating" not in caplog.text and "epoch 1 evaluating" not in caplog.text
    assert "epoch 2 evaluating" in caplog.text


def scheduled_trainer(tiny_config, **settings):
    """A DiffGM trainer with a 2-step warmup to lr 0.01, the list its optimizer steps' rates go to, and the data."""
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "warmup_steps": 2, "learning_rate": 0.01, **settings})
    train, valid, _ = data_preparation(config, create_dataset(config))
    trainer = get_trainer(config["MODEL_TYPE"], "DiffGM")(config, get_model("DiffGM")(config, train._dataset))
    rates = []
    trainer.optimizer.register_step_pre_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    return trainer, rates, train, valid


def warmup_then_cosine(total: int) -> list[float]:
    """The rate of each of ``total`` steps: 2 warmup steps to 0.01, then one cosine to 0 at the last."""
    return [0.0, 0.005] + [0.005 * (1 + math.cos(math.pi * (step - 2) / (total - 2))) for step in range(2, total)]


def test_learning_rate_warms_up_then_follows_a_cosine(tiny_config):
    trainer, rates, train, _ = scheduled_trainer(tiny_config, epochs=3)
    config, model = trainer.config, trainer.model
    trainer.fit(train, None, saved=False)
    expected = warmup_then_cosine(3 * len(train))
    assert rates == pytest.approx(expected)

    # A run resumed at epoch 1 continues the schedule where epoch 0 left it.
    resumed = get_trainer(config["MODEL_TYPE"], "DiffGM")(config, model)
    resumed.start_epoch, rates[:] = 1, []
    resumed.optimizer.register_step_pre_hook(lambda optimizer, *_: rates.append(optimizer.param_groups[0]["lr"]))
    resumed.fit(train, None, saved=False)
    assert rates == pytest.approx(expected[len(train):])


def test_the_cosine_spans_every_epoch_when_validation_starts_late(tiny_config):
    """``fit`` trains the epochs before ``eval_start_epoch`` as a phase of their own; the schedule is the run's, one
    warmup and one cosine over all ``epochs``, with no restart where validation begins."""
    trainer, rates, train, valid = scheduled_trainer(tiny_config, epochs=4, eval_start_epoch=2)
    trainer.fit(train, valid, saved=False)
    expected = warmup_then_cosine(4 * len(train))
    assert trainer.curve and trainer.curve[0]["epoch"] == 2  # validated, from the third epoch on
    assert rates == pytest.approx(expected)


def test_sid_full_sort_metrics_rank_every_catalogue_sid(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "n_digit": 2, "eval_level": "sid_full_sort",
                                                 "test_beam_size": 128, "topk": [1, 5]})
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset).eval()
    trainer = get_trainer(config["MODEL_TYPE"], "DiffGM")(config, model)
    result = trainer.evaluate(valid, load_best_model=False)
    assert set(result) == {"sid_full_sort_recall@1", "sid_full_sort_recall@5", "sid_full_sort_ndcg@1", "sid_full_sort_ndcg@5"}

    # By hand: rank each target's SID among the catalogue's SIDs by their best beam score.
    ranks = []
    for target_sid, beams in catalogue_beams(model, valid, 128):
        best = {}
        for sid, score in beams:
            best.setdefault(sid, score)
        ranks.append(1 + sum(score > best[target_sid] for score in best.values()))
    ranks = torch.tensor(ranks, dtype=torch.float)
    assert 0 < result["sid_full_sort_recall@5"] < 1  # a mix of hits and misses, so the comparison means something
    assert result["sid_full_sort_recall@5"] == pytest.approx(round((ranks <= 5).float().mean().item(), 4))
    assert result["sid_full_sort_recall@1"] == pytest.approx(round((ranks <= 1).float().mean().item(), 4))
    ndcg = torch.where(ranks <= 5, 1 / torch.log2(ranks + 1), 0.0).mean().item()
    assert result["sid_full_sort_ndcg@5"] == pytest.approx(round(ndcg, 4))


def test_weighted_dedup_sums_the_probability_of_every_path_to_a_sid(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "n_digit": 2, "dedup_strategy": "weighted"})
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset).eval()
    history = next(iter(valid))[0]["item_id_list"][:1]
    model.beam_size = 128  # covers every partial SID
    with torch.no_grad():
        scores = model.full_sort_predict({model.ITEM_SEQ: history})
        # By hand: both fill orders of every catalogue SID, from the denoiser's conditional log-probabilities.
        memory_kv, memory_mask = model.encode(history)
        sids = model.distinct_sids
        first = model.denoise(torch.full((1, 1, 2), MASK), memory_kv, memory_mask)[0, 0]
        second_after_first = model.denoise(sids[None].masked_fill(torch.tensor([False, True]), MASK), memory_kv,
                                           memory_mask)[0, :, 1]
        first_after_second = model.denoise(sids[None].masked_fill(torch.tensor([True, False]), MASK), memory_kv,
                                           memory_mask)[0, :, 0]
        rows = torch.arange(len(sids))
        orders = torch.stack([first[0, sids[:, 0]] + second_after_first[rows, sids[:, 1]],
                              first[1, sids[:, 1]] + first_after_second[rows, sids[:, 0]]])
    expected = dict(zip(map(tuple, sids.tolist()), orders.logsumexp(0).tolist()))
    for item in range(1, model.n_items):
        assert scores[0, item].item() == pytest.approx(expected[tuple(model.item_sid[item].tolist())], abs=1e-4)


def test_the_packed_encoder_matches_a_padded_reference(tiny):
    model, batch, _ = tiny
    model.eval()
    item_seq = batch[model.ITEM_SEQ]
    memory_kv, mask = model.encode(item_seq)
    # Reference: every position through every layer, padding included, keys masked; then zero the padding.
    hidden = model.item_mlp(model.token_embedding(model.item_tokens[item_seq]).flatten(2))
    hidden = hidden + model.position_embedding(torch.arange(item_seq.shape[1]))
    for block in model.encoder:
        q, k, v = (block.attn._heads(part) for part in block.attn.qkv(block.ln_attn(hidden)).chunk(3, dim=-1))
        attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        hidden = hidden + block.attn.proj(attended.transpose(1, 2).flatten(2))
        hidden = hidden + block.ffn(block.ln_ffn(hidden))
    memory = model.ln_f(hidden) * mask[..., None]
    assert mask.sum() < mask.numel()  # the batch has padding to skip
    for block, (keys, values) in zip(model.decoder, memory_kv):
        cross = block.cross_attn  # the block's own cross-attention, not its self-attention
        reference_k, reference_v = (cross._heads(part) for part in
                                    torch.nn.functional.linear(memory, cross.qkv.weight[cross.d_attn:]).chunk(2, -1))
        assert torch.allclose(keys, reference_k, atol=1e-5) and torch.allclose(values, reference_v, atol=1e-5)


def test_ddp_on_two_cpu_processes_evaluates_like_one_process(tiny_config):
    with socket.socket() as probe:  # a free port for rank 0
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    result = run_recbole_diffgm("DiffGM", NAME, config_dict={**tiny_config, "epochs": 2}, nproc=2, port=port)
    assert result["test_result"] and result["best_valid_result"]
    # The same saved model evaluated by one process: RecBole's DDP splits the 24 test users 12 / 12.
    config, model, _, _, _, test = load_data_and_model(result["model_file"])
    assert config["single_spec"]
    single = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(test, load_best_model=False)
    assert max(single.values()) > 0  # a model that hits something, so a wrong reduction would show
    for metric, value in single.items():
        assert result["test_result"][metric] == pytest.approx(value, abs=2e-4), metric


def test_cross_attention_has_its_own_weights_as_in_the_release(tiny_config):
    config = Config("DiffGM", NAME, config_dict=tiny_config)
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset).eval()
    block = model.decoder[0]
    assert block.cross_attn is not None and block.cross_attn.qkv.weight.data_ptr() != block.attn.qkv.weight.data_ptr()
    item_seq = next(iter(valid))[0]["item_id_list"]
    with torch.no_grad():
        before = model.encode(item_seq)[0][0][0].clone()
        block.attn.qkv.weight.zero_()  # the self-attention's weights do not make the memory's keys ...
        assert torch.equal(model.encode(item_seq)[0][0][0], before)
        block.cross_attn.qkv.weight.mul_(2)  # ... the cross-attention's do
        assert not torch.equal(model.encode(item_seq)[0][0][0], before)

    shared = get_model("DiffGM")(Config("DiffGM", NAME, config_dict={**tiny_config, "decoder_cross_attention": "shared"}),
                                 train._dataset)
    assert all(block.cross_attn is None for block in shared.decoder)
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in shared.parameters())


def test_a_checkpoint_from_before_separate_cross_attention_loads_as_shared(tiny_config, tmp_path):
    result = run_recbole_diffgm("DiffGM", NAME, config_dict={**tiny_config, "epochs": 1,
                                                             "decoder_cross_attention": "shared"})
    checkpoint = torch.load(result["model_file"], weights_only=False)
    del checkpoint["config"].final_config_dict["decoder_cross_attention"]  # as an older version wrote it
    old_file = tmp_path / "old.pth"
    torch.save(checkpoint, old_file)
    _, model, *_ = load_data_and_model(str(old_file))
    assert all(block.cross_attn is None for block in model.decoder)


def test_items_that_share_a_sid_are_ordered_by_popularity_then_id_exactly():
    from recbole_diffgm.evaluation import break_ties

    # Items 1-4 share a SID (popularity 5, 8, 10, 8), items 5-6 another; item 0 is alone.
    groups = torch.tensor([0, 1, 1, 1, 1, 2, 2])
    popularity = torch.tensor([3, 5, 8, 10, 8, 1, 1])
    ranks = group_ranks(groups, popularity)
    assert ranks.tolist() == [0, 3, 1, 0, 2, 0, 1]  # 10 first, then the two 8s by id, then 5; ties by id
    # Scores near -20, where the float32 spacing is 2e-6: a popularity epsilon of 1e-4 * pop / max would be lost.
    group_score = torch.tensor([-20.0, -20.000002, -20.000004])
    scores = group_score[groups][None]
    order = break_ties(scores, ranks).argsort(dim=1, descending=True)[0].tolist()
    assert order == [0, 3, 2, 4, 1, 5, 6]
    # The float32 order between groups is kept, and non-finite scores stay as they are.
    assert break_ties(torch.tensor([[float("-inf"), -1.0]]), torch.tensor([1, 0])).tolist() == [[float("-inf"), -1.0]]
    # Unique groups (sid_collision: reassign): the scores come back as they are.
    unique = torch.tensor([[-3.0, -1.0, -2.0]])
    assert break_ties(unique, torch.zeros(3, dtype=torch.long)) is unique


def test_full_sort_orders_the_items_of_a_sid_by_training_popularity(tiny):
    model, _, valid = tiny
    model.eval()
    with torch.no_grad():
        scores = model.full_sort_predict(valid)
    shared = [items for items in _sid_groups(model) if len(items) > 1]
    assert shared, "the tiny catalogue has items that share a SID"
    for items in shared:
        ranks = model.sid_group_rank[items]
        for user_scores in scores:
            assert torch.equal(user_scores[items].argsort(descending=True), ranks.argsort()), items


def _sid_groups(model) -> list[torch.Tensor]:
    _, group = model.item_sid[1:].unique(dim=0, return_inverse=True)
    return [torch.nonzero(group == g)[:, 0] + 1 for g in group.unique()]


def test_the_dense_head_adds_its_loss_and_its_item_scores_at_item_level_only(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "dense_head": True, "dense_weight": 0.5})
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset)
    batch, interaction = next(iter(train)), next(iter(valid))[0]
    torch.manual_seed(0)
    generative = model.generative_loss(batch)
    dense = model.dense_log_probs(batch[model.ITEM_SEQ])
    assert dense[:, 0].isneginf().all() and torch.allclose(dense[:, 1:].exp().sum(1), torch.ones(len(dense)))
    torch.manual_seed(0)
    assert model.calculate_loss(batch).item() == pytest.approx(
        generative.item() + torch.nn.functional.nll_loss(dense, batch[model.POS_ITEM_ID]).item(), rel=1e-5)

    fused, pure, dense = fused_pure_dense(model, interaction)
    items = torch.arange(1, model.n_items)
    # Up to the tie-break (below a float32 step), fused = pure + 0.5 dense.
    assert torch.allclose(fused[:, items], pure[:, items] + 0.5 * dense[:, items].double(), atol=1e-4)
    # Items that share a SID are no longer tied: the dense head orders them.
    shared = next(group for group in _sid_groups(model) if len(group) > 1)
    assert torch.equal(fused[:, shared].argsort(dim=1), dense[:, shared].argsort(dim=1))

    model.eval_level = "sid_full_sort"  # SID level stays purely generative
    with torch.no_grad():
        sid_fused = model.full_sort_predict(interaction)
        model.dense_head = False
        assert torch.equal(sid_fused, model.full_sort_predict(interaction))


def _prefix_rows(batch) -> dict[str, torch.Tensor]:
    """RecBole's one row per prefix of the histories of ``batch`` (each followed by its row's target)."""
    histories, lengths, targets = [], [], []
    for seq, length, target in zip(batch["item_id_list"], batch["item_length"], batch["item_id"]):
        sequence = [*seq[:length].tolist(), int(target)]
        for step in range(1, len(sequence)):
            histories.append(sequence[:step] + [0] * (seq.shape[0] - step))
            lengths.append(step)
            targets.append(sequence[step])
    return {"item_id_list": torch.tensor(histories), "item_length": torch.tensor(lengths),
            "item_id": torch.tensor(targets)}


@pytest.mark.parametrize("model_name", ["DiffGM", "ARGM"])
def test_per_position_training_is_the_mean_over_every_prefix_row(tiny_config, model_name):
    settings = {**tiny_config, "train_per_position": True, "dropout": 0.0, "epochs": 1}
    config = Config(model_name, NAME, config_dict=settings)
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    rows = train._dataset.inter_feat
    assert len(rows) == len(rows["user_id"].unique())  # one training row per user: its longest prefix
    torch.manual_seed(0)
    model = get_model(model_name)(config, train._dataset)
    batch = next(iter(train))
    per_position = model.generative_loss(batch)

    # The same targets as RecBole's one row per prefix, through the same causal encoder.
    prefix_rows = _prefix_rows(batch)
    model.train_per_position = False
    assert len(prefix_rows["item_id"]) == int(batch["item_length"].sum())  # RecBole's prefix rows of these users
    assert model.generative_loss(prefix_rows).item() == pytest.approx(per_position.item(), rel=1e-5)


@pytest.mark.parametrize("model_name", ["DiffGM", "TIGER"])
def test_per_position_training_trains_the_dense_head_at_every_position(tiny_config, model_name):
    overrides = {"sid_quantizer": "rq_kmeans", "n_digit": 2, "head_dim": None} if model_name == "TIGER" else {}
    config = Config(model_name, NAME, config_dict={**tiny_config, **overrides, "train_per_position": True,
                                                   "dense_head": True, "dropout": 0.0})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model(model_name)(config, train._dataset)
    batch = next(iter(train))
    dense_loss = model.calculate_loss(batch) - model.generative_loss(batch)

    # Every (position, next item) pair of the histories, as RecBole's prefix rows hold them: the causal encoder's
    # last state of a prefix is the state the whole history has at that position (TIGER: its last digit's).
    prefix_rows = _prefix_rows(batch)
    assert len(prefix_rows["item_id"]) > len(batch)
    expected = torch.nn.functional.nll_loss(model.dense_log_probs(prefix_rows["item_id_list"]), prefix_rows["item_id"])
    assert dense_loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _training_item_counts(dataset, data_path: str) -> torch.Tensor:
    """Each item's occurrences in the training split, read from the ``.inter`` file: every user's items but the
    last two (leave-one-out: the validation and test items)."""
    from conftest import read_atomic

    inter = read_atomic(Path(data_path) / NAME / f"{NAME}.inter")
    inter = inter.assign(time=inter["timestamp:float"].astype(float)).sort_values(["user_id:token", "time"])
    training = [item for _, items in inter.groupby("user_id:token")["item_id:token"] for item in items.iloc[:-2]]
    return torch.bincount(torch.as_tensor(dataset.token2id("item_id", training)), minlength=dataset.item_num)


def test_a_per_position_run_trains_and_tests(tiny_config):
    result = run_recbole_diffgm("DiffGM", NAME, config_dict={**tiny_config, "train_per_position": True, "epochs": 2})
    assert result["test_result"] and result["epochs_run"] == 2
    # Reloaded, the model orders the items of a SID by the same training popularity: every training item.
    _, model, dataset, *_ = load_data_and_model(result["model_file"])
    counts = _training_item_counts(dataset, tiny_config["data_path"])
    assert torch.equal(model.sid_group_rank, group_ranks(model.item_sid_index, counts))


def test_the_popularity_tie_break_counts_training_interactions_only(tiny_config, tmp_path):
    # Items 0 and 1 of the tiny catalogue have the same text, so the same SID. Item 1 is in 6 training histories;
    # item 0 is the held-out test item of 8 users and in no training row: over all data item 0 is the more popular.
    from conftest import read_atomic

    folder = tmp_path / "data" / NAME
    tokens = read_atomic(folder / f"{NAME}.item")["item_id:token"].tolist()
    rows = []
    for user in range(12):
        history = [tokens[2 + (3 * user + k) % 40] for k in range(4)]
        if user < 6:
            history[1] = tokens[1]
        test_item = tokens[0] if user < 8 else tokens[42]
        rows += [f"u{user}\t{item}\t{k}" for k, item in enumerate([*history, tokens[44], test_item])]
    (folder / f"{NAME}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "\n".join(rows) + "\n")
    config = Config("DiffGM", NAME, config_dict=tiny_config)
    dataset = create_dataset(config)
    train, _, test = data_preparation(config, dataset)
    model = get_model("DiffGM")(config, train._dataset).eval()
    first, copy = dataset.token2id("item_id", [tokens[0], tokens[1]])
    assert torch.equal(model.item_sid[first], model.item_sid[copy])
    assert model.sid_group_rank[copy] == 0 and model.sid_group_rank[first] == 1
    with torch.no_grad():
        scores = model.full_sort_predict(next(iter(test))[0])
    assert (scores[:, copy] > scores[:, first]).all()


@pytest.mark.parametrize("max_length", [50, 2])
def test_the_popularity_tie_break_counts_every_training_item_with_or_without_per_position(tiny_config, max_length):
    # Each user's training items, its first (which no training row has as its target) included, and with a history
    # cut to MAX_ITEM_LIST_LENGTH (2) the items before it too; not one target per user under train_per_position.
    ranks = []
    for per_position in (False, True):
        config = Config("DiffGM", NAME, config_dict={**tiny_config, "train_per_position": per_position,
                                                     "MAX_ITEM_LIST_LENGTH": max_length})
        dataset = create_dataset(config)
        train, _, _ = data_preparation(config, dataset)
        model = get_model("DiffGM")(config, train._dataset)
        counts = _training_item_counts(dataset, tiny_config["data_path"])
        assert torch.equal(model.sid_group_rank, group_ranks(model.item_sid_index, counts))
        assert torch.equal(train._dataset.item_popularity, counts)
        ranks.append(model.sid_group_rank)
    assert torch.equal(*ranks)


def test_random_masking_from_the_config_hides_each_slot_with_mask_prob(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "masking_strategy": "random", "mask_prob": 0.25,
                                                 "ocn_views": 3})
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset)
    target = model.item_sid[torch.arange(1, model.n_items).repeat(50)]
    torch.manual_seed(0)
    views = model.masking_views(target, None, None)
    assert views.shape == (len(target), 3, model.n_digit)
    assert views.float().mean().item() == pytest.approx(0.25, abs=0.01)
    nested = (views[:, 1:] >= views[:, :-1]).all()  # guided and sequential views are nested; random ones are not
    assert not nested
    batch = next(iter(train))
    assert torch.isfinite(model.calculate_loss(batch))


def test_random_decode_order_from_the_config_fills_slots_in_one_fixed_order(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "decode_order": "random", "seed": 3})
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("DiffGM")(config, train._dataset).eval()
    order = model.slot_order
    assert sorted(order.tolist()) == list(range(model.n_digit)) and order.tolist() != list(range(model.n_digit))
    filled_in = []

    def recording(codes, memory_kv, memory_mask):
        filled_in.append((codes != MASK).sum(dim=-1).max().item())
        if len(filled_in) > 1:  # every beam has filled exactly the first slots of the order
            assert (codes[..., order[: filled_in[-1]]] != MASK).all() and (codes != MASK).sum(-1).eq(filled_in[-1]).all()
        return DiffGM.denoise(model, codes, memory_kv, memory_mask)

    model.denoise = recording
    with torch.no_grad():
        model.decode(next(iter(valid))[0]["item_id_list"], 8)
    assert filled_in == list(range(model.n_digit))


@pytest.mark.parametrize("masking_strategy", ["guided", "random"])
def test_the_catalogue_loss_is_the_cross_entropy_of_one_pass_scores(tiny_config, masking_strategy):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "catalogue_loss_weight": 0.5,
                                                 "masking_strategy": masking_strategy, "label_smoothing": 0.1})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model("DiffGM")(config, train._dataset).eval()  # no dropout: every pass is deterministic
    batch = next(iter(train))
    torch.manual_seed(1)
    with_catalogue = model.calculate_loss(batch)
    model.catalogue_loss_weight = 0.0
    torch.manual_seed(1)
    digits_only = model.calculate_loss(batch)

    # By hand: every distinct catalogue SID scored by its digits' all-masked log-probabilities, a softmax over them.
    with torch.no_grad():
        memory_kv, memory_mask = model.encode(batch["item_id_list"])
        masked = torch.full((len(batch), 1, model.n_digit), MASK)
        first = model.denoise(masked, memory_kv, memory_mask)[:, 0]
    catalogue = sorted({tuple(sid) for sid in model.item_sid[1:].tolist()})
    losses = []
    for row, target in enumerate(batch["item_id"].tolist()):
        logits = torch.tensor([sum(first[row, d, code].item() for d, code in enumerate(sid)) for sid in catalogue])
        log_probs = logits.log_softmax(dim=0)
        target_index = catalogue.index(tuple(model.item_sid[target].tolist()))
        losses.append(-(0.9 * log_probs[target_index] + 0.1 * log_probs.mean()))
    expected = torch.stack(losses).mean()
    assert (with_catalogue - digits_only).item() == pytest.approx(0.5 * expected.item(), rel=1e-4)


def test_the_sampled_catalogue_loss_is_a_softmax_over_the_batch_targets_and_the_drawn_sids(tiny_config):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, "catalogue_loss_weight": 1.0, "label_smoothing": 0.1,
                                                 "catalogue_loss_samples": 5})
    train, _, _ = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model("DiffGM")(config, train._dataset).eval()
    batch = next(iter(train))
    with torch.no_grad():
        memory_kv, memory_mask = model.encode(batch["item_id_list"])
        first = model.denoise(torch.full((len(batch), 1, model.n_digit), MASK), memory_kv, memory_mask)[:, 0]
    targets = batch["item_id"]
    torch.manual_seed(2)
    sampled = model.catalogue_loss(first, targets)

    # By hand, with the same draws: each row's classes are the batch's target SIDs and the drawn SIDs, less the
    # other copies of its own SID; label smoothing spreads over those classes.
    catalogue = model.distinct_sids.tolist()
    torch.manual_seed(2)
    drawn = torch.randint(len(catalogue), (5,)).tolist()
    target_sids = model.item_sid_index[targets].tolist()
    candidates = target_sids + drawn
    losses = []
    for row, own in enumerate(target_sids):
        kept = [sid for column, sid in enumerate(candidates) if column == row or sid != own]
        logits = torch.tensor([sum(first[row, d, code].item() for d, code in enumerate(catalogue[sid]))
                               for sid in kept])
        log_probs = logits.log_softmax(dim=0)
        losses.append(-(0.9 * log_probs[kept.index(own)] + 0.1 * log_probs.mean()))
    assert sampled.item() == pytest.approx(torch.stack(losses).mean().item(), rel=1e-4)
    assert len(set(target_sids)) < len(target_sids)  # the batch repeats a target: the copy rule was exercised

    model.catalogue_loss_samples = len(catalogue)  # as many as the catalogue: the full softmax
    full = model.catalogue_loss(first, targets)
    model.catalogue_loss_samples = 0
    assert full.item() == model.catalogue_loss(first, targets).item()
