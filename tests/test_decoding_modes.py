"""DiffGM's fast decoding path against a plain reference, its faster modes, and its GPU options on the CPU."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import NAME
from recbole.data import data_preparation
from test_diffgm import every_sid, path_score, toy_denoiser, train_steps

from recbole_diffgm import Config, create_dataset, get_model
from recbole_diffgm.errors import InputError
from recbole_diffgm.evaluation import digit_sum_scores
from recbole_diffgm.model.decoding import (
    MASK,
    cpd_beam_search,
    fill_schedule,
    guided_sid_scores,
)


def plain_cpd(model, history: torch.Tensor, beam_size: int) -> list[tuple[float, tuple[int, ...]]]:
    """CPD the plain way: one user, one beam at a time, the history re-encoded and every slot scored each time; a
    partial SID is a candidate when some catalogue SID matches its fixed digits, and its best copy counts."""
    catalogue = [tuple(sid) for sid in model.distinct_sids.tolist()]
    beams = [(0.0, (MASK,) * model.n_digit)]
    for _ in range(model.n_digit):
        candidates = {}
        for score, codes in beams:
            memory_kv, memory_mask = model.encode(history[None])
            state = torch.tensor(codes)[None, None]
            visible = state != MASK
            tokens = model.token_embedding(torch.where(visible, state + model.code_offsets, 0))
            inputs = torch.where(visible[..., None], tokens, model.mask_embedding)
            log_probs = model.decode_slots(inputs, memory_kv, memory_mask)[0, 0]
            for slot, code in itertools.product(range(model.n_digit), range(model.n_codes)):
                if codes[slot] == MASK:
                    filled = codes[:slot] + (code,) + codes[slot + 1:]
                    if any(all(c in (MASK, d) for c, d in zip(filled, sid)) for sid in catalogue):
                        new_score = score + log_probs[slot, code].item()
                        candidates[filled] = max(candidates.get(filled, float("-inf")), new_score)
        beams = sorted(((score, codes) for codes, score in candidates.items()), reverse=True)[:beam_size]
    return beams


def test_the_fast_cpd_path_equals_a_plain_reference(tiny):
    model, batch, _ = tiny
    train_steps(model, batch)  # sharper distributions than at initialisation: no near-ties
    model.eval()
    histories = batch[model.ITEM_SEQ][:3]
    with torch.no_grad():
        codes, scores, _ = model.decode(histories, beam_size=8)
        references = [plain_cpd(model, history, beam_size=8) for history in histories]
    for reference, user_codes, user_scores in zip(references, codes, scores):
        # Beams of two fill orders can end on one SID: then fewer than 8, and the rest -inf.
        alive = user_scores.isfinite()
        assert not alive[alive.sum():].any()
        assert [tuple(sid) for sid in user_codes[alive].tolist()] == [sid for _, sid in reference]
        torch.testing.assert_close(user_scores[alive], torch.tensor([score for score, _ in reference]), atol=1e-4,
                                   rtol=0)


@torch.no_grad()
def test_cpd_on_a_cpu_decodes_in_user_chunks_as_in_one_batch(tiny, monkeypatch):
    import recbole_diffgm.model.diffgm as diffgm

    model, batch, _ = tiny
    model.eval()
    histories = batch[model.ITEM_SEQ][:7]
    codes, scores, first = model.decode(histories, beam_size=8)
    decoded = []
    monkeypatch.setattr(diffgm, "CPU_CPD_SEQUENCES", 16)  # 2 users of 8 beams at a time: 4 chunks
    real_decode = diffgm.DiffGM.decode
    monkeypatch.setattr(diffgm.DiffGM, "decode", lambda self, seq, beam_size: decoded.append(len(seq)) or
                        real_decode(self, seq, beam_size))
    chunked = model.decode(histories, beam_size=8)
    assert decoded == [7, 2, 2, 2, 1]
    alive = scores.isfinite()
    assert torch.equal(chunked[1].isfinite()[:, : scores.shape[1]], alive)
    assert torch.equal(chunked[0][:, : scores.shape[1]][alive], codes[alive])
    torch.testing.assert_close(chunked[1][:, : scores.shape[1]][alive], scores[alive], atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked[2], first, atol=1e-5, rtol=0)


def test_user_chunks_with_fewer_beams_are_padded_with_dead_beams():
    from recbole_diffgm.model.diffgm import concat_beams

    wide = (torch.tensor([[[1, 2], [3, 4], [5, 6]]]), torch.tensor([[-1.0, -2.0, -3.0]]), torch.zeros(1, 2, 4))
    narrow = (torch.tensor([[[7, 8]]]), torch.tensor([[-0.5]]), torch.ones(1, 2, 4))
    codes, scores, first = concat_beams([wide, narrow])
    assert codes.shape == (2, 3, 2) and codes[1].tolist() == [[7, 8]] * 3
    assert scores[1].tolist() == [-0.5, float("-inf"), float("-inf")] and first.shape == (2, 2, 4)


def test_fill_schedules_spread_the_digits_and_fill_more_last():
    assert fill_schedule(4, 4) == [1, 1, 1, 1]
    assert fill_schedule(4, 3) == [1, 1, 2]
    assert fill_schedule(4, 2) == [2, 2]
    assert fill_schedule(4, 1) == [4]
    assert fill_schedule(5, 2) == [2, 3]


def counting(denoise):
    calls = []

    def counted(codes):
        calls.append(codes.clone())
        return denoise(codes)

    return counted, calls


def test_one_pass_cpd_expands_one_slot_and_fills_the_other_from_the_same_pass():
    tables, denoise = toy_denoiser()
    first = tables[(MASK, MASK)]
    expected = {}
    for slot, code in itertools.product(range(2), range(3)):
        sid = [0, 0]
        sid[slot], sid[1 - slot] = code, first[1 - slot].argmax().item()
        score = first[slot, code].item() + first[1 - slot].max().item()
        expected[tuple(sid)] = max(expected.get(tuple(sid), float("-inf")), score)  # one SID, two beams: merged
    expected = sorted(((score, sid) for sid, score in expected.items()), reverse=True)
    counted, calls = counting(denoise)
    codes, scores, _ = cpd_beam_search(counted, every_sid(), 1, beam_size=6, passes=1)
    assert len(calls) == 1
    assert [tuple(c) for c in codes[0].tolist()] == [sid for _, sid in expected]
    torch.testing.assert_close(scores[0], torch.tensor([score for score, _ in expected]))


@torch.no_grad()
def test_fewer_passes_run_fewer_denoiser_calls_and_complete_every_sid(tiny):
    model, batch, _ = tiny
    model.eval()
    histories = batch[model.ITEM_SEQ][:4]
    memory_kv, memory_mask = model.encode(histories)
    counted, calls = counting(lambda codes: model.denoise(codes, memory_kv, memory_mask))
    codes, scores, _ = cpd_beam_search(counted, model.sid_patterns, 4, beam_size=16, passes=2)
    # 4 digits in 2 passes: each pass expands the beam on 1 digit and fills 1 more greedily.
    assert len(calls) == 2 and (calls[1] != MASK).sum(-1).eq(2).all()
    assert (codes != MASK).all() and (scores[:, 1:] <= scores[:, :-1]).all()
    full, _, _ = cpd_beam_search(lambda c: model.denoise(c, memory_kv, memory_mask), model.sid_patterns, 4, 16)
    default, _, _ = cpd_beam_search(lambda c: model.denoise(c, memory_kv, memory_mask), model.sid_patterns, 4, 16,
                                    passes=model.n_digit)
    assert torch.equal(full, default)


@torch.no_grad()
@pytest.mark.parametrize("passes", [None, 2])
def test_every_beam_is_a_distinct_catalogue_sid(tiny, passes):
    """The beam spends its width on distinct SIDs that some item has, none repeated, none outside the catalogue, in
    every decoding schedule; a beam left without a state (two fill orders that ended on one SID) scores -inf."""
    model, batch, _ = tiny
    model.eval()
    model.decode_passes = passes or model.n_digit
    codes, scores, _ = model.decode(batch[model.ITEM_SEQ][:4], beam_size=16)
    assert scores.shape[1] <= 16 and scores[:, 0].isfinite().all()
    for user_codes, alive in zip(codes, scores.isfinite()):
        assert (model.sid_trie.lookup(user_codes[alive]) >= 0).all()
        assert len({tuple(sid) for sid in user_codes[alive].tolist()}) == alive.sum()


def test_digit_sum_scores_sum_the_all_masked_log_probs():
    tables, _ = toy_denoiser()
    first = tables[(MASK, MASK)][None]
    sids = torch.tensor(list(itertools.product(range(3), repeat=2)))
    expected = torch.tensor([[first[0, 0, a] + first[0, 1, b] for a, b in sids.tolist()]])
    torch.testing.assert_close(digit_sum_scores(first, sids), expected)


def test_digit_sum_scores_are_the_same_with_and_without_a_gradient():
    # Evaluation sums bags of table rows, training gathers with autograd: the same floats, to the bit, on the
    # shapes of a catalogue (codes repeat within a digit) and a batch that is not a power of two.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 4, 64, generator=generator, requires_grad=True)
    first = logits.log_softmax(dim=-1)
    sids = torch.randint(0, 64, (1000, 4), generator=generator)
    with torch.no_grad():
        evaluated = digit_sum_scores(first, sids)
    trained = digit_sum_scores(first, sids)
    assert trained.requires_grad and not evaluated.requires_grad
    assert torch.equal(evaluated, trained.detach())
    assert torch.equal(trained.detach(), sum(first.detach()[:, d, sids[:, d]] for d in range(4)))


def test_guided_scores_fill_each_sid_most_confident_digit_first():
    tables, denoise = toy_denoiser()
    sids = torch.tensor(list(itertools.product(range(3), repeat=2)))[None]
    first = tables[(MASK, MASK)]
    expected = []
    for sid in sids[0].tolist():
        order = (0, 1) if first[0, sid[0]] >= first[1, sid[1]] else (1, 0)
        expected.append(path_score(tables, sid, order))
    torch.testing.assert_close(guided_sid_scores(denoise, sids, first[None]), torch.tensor([expected]))


@torch.no_grad()
def test_one_pass_mode_ranks_the_catalogue_and_reranks_its_top(tiny):
    model, batch, _ = tiny
    model.eval()
    histories = batch[model.ITEM_SEQ][:3]
    model.decode_mode = "one_pass"
    codes, scores, first = model.decode(histories, beam_size=5)
    every = digit_sum_scores(first, model.distinct_sids)
    torch.testing.assert_close(scores, every.topk(5, dim=1).values)
    assert (model.sid_trie.lookup(codes) >= 0).all()
    model.rerank_size = 6
    reranked, rescored, _ = model.decode(histories, beam_size=5)
    memory_kv, memory_mask = model.encode(histories)
    top = model.distinct_sids[every.topk(6, dim=1).indices]
    guided = guided_sid_scores(lambda c: model.denoise(c, memory_kv, memory_mask), top, first)
    torch.testing.assert_close(rescored, guided.sort(dim=1, descending=True).values)
    assert all({tuple(s) for s in a} == {tuple(s) for s in b} for a, b in zip(reranked.tolist(), top.tolist()))


@pytest.mark.parametrize("key, value", [("decode_mode", "two_pass"), ("decode_passes", 5), ("rerank_size", -1)])
def test_decoding_mode_values_are_checked(tiny_config, key, value):
    config = Config("DiffGM", NAME, config_dict={**tiny_config, key: value})
    with pytest.raises(Exception, match=key):
        get_model("DiffGM")(config, create_dataset(config))


@pytest.mark.parametrize("key, value", [("ocn_views", 2), ("decode_mode", "cpd"), ("rerank_size", 8)])
def test_the_digit_classifier_refuses_diffgms_method(tiny_config, key, value):
    """A model named DigitClassifier never trains with OCN's views nor decodes with CPD: those are DiffGM's."""
    config = Config("DigitClassifier", NAME, config_dict={**tiny_config, key: value})
    with pytest.raises(InputError, match=f"{key} .*: run --model=DiffGM for it"):
        get_model("DigitClassifier")(config, create_dataset(config))
    config = Config("DigitClassifier", NAME, config_dict=tiny_config)
    model = get_model("DigitClassifier")(config, create_dataset(config))
    assert (model.ocn_views, model.decode_mode, model.rerank_size) == (1, "one_pass", 0)


def test_bf16_autocast_trains_and_decodes_close_to_float32(tiny_config):
    losses = {}
    for precision in ("none", "bf16"):
        config = Config("DiffGM", NAME, config_dict={**tiny_config, "mixed_precision": precision})
        train, _, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        model = get_model("DiffGM")(config, train._dataset)
        batch = next(iter(train))
        losses[precision] = train_steps(model, batch, steps=5)
        model.eval()
        with torch.no_grad():
            _, scores, first = model.decode(batch[model.ITEM_SEQ][:4], beam_size=4)
        assert scores.dtype == first.dtype == torch.float32 and scores.isfinite().all()
    assert losses["bf16"][-1] < losses["bf16"][0]
    assert losses["bf16"][0] == pytest.approx(losses["none"][0], rel=0.02)


def test_compile_traces_the_decoder_blocks_and_decodes_as_eager(tiny_config, monkeypatch):
    # Inductor takes minutes to compile on a CPU, so dynamo traces with its eager backend here: the graph capture
    # of the decoder with dynamic beam counts is what is checked; inductor itself is PyTorch's to test.
    compile_module, compiled = torch.nn.Module.compile, []

    def eager_compile(module, **kwargs):
        compiled.append(module)
        compile_module(module, backend="eager", **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", eager_compile)
    scores = {}
    for flag in (False, True):
        config = Config("DiffGM", NAME, config_dict={**tiny_config, "compile": flag})
        train, _, _ = data_preparation(config, create_dataset(config))
        torch.manual_seed(0)
        model = get_model("DiffGM")(config, train._dataset).eval()
        with torch.no_grad():
            _, scores[flag], _ = model.decode(next(iter(train))[model.ITEM_SEQ][:4], beam_size=4)
    assert compiled == list(model.decoder)
    torch.testing.assert_close(scores[True], scores[False])
