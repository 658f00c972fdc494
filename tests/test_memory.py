"""The memory check of evaluation (``recbole_diffgm.trainer.memory``): its estimate against what torch allocates,
and a run whose evaluation batch cannot fit stopping before its first epoch."""

from __future__ import annotations

import pytest
import torch
from conftest import NAME
from recbole.data import data_preparation
from torch._C._profiler import _EventType

from recbole_diffgm import Config, create_dataset, get_model
from recbole_diffgm.errors import InputError
from recbole_diffgm.trainer import GenerativeTrainer, memory
from recbole_diffgm.utils import get_trainer


def peak_allocated(work) -> int:
    """Peak bytes that torch's CPU allocator held at once during ``work()``, beyond what it held before: the
    profiler's allocation events carry the allocator's running total (RSS would also count Python, the
    profiler and the allocator's slack, and tracemalloc sees no tensor)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profiler:
        work()
    nodes, peak = list(profiler.profiler.kineto_results.experimental_event_tree()), 0
    while nodes:
        node = nodes.pop()
        nodes.extend(node.children)
        if node.tag == _EventType.Allocation:
            peak = max(peak, node.extra_fields.total_allocated)
    return peak


def build(tiny_config, model_name: str = "DiffGM", **overrides):
    config = Config(model_name, NAME, config_dict={**tiny_config, **overrides})
    train, valid, test = data_preparation(config, create_dataset(config))
    torch.manual_seed(0)
    model = get_model(model_name)(config, train._dataset)
    return config, model, get_trainer(config["MODEL_TYPE"], model_name)(config, model), train, valid, test


def test_the_measure_sees_every_live_tensor():
    base = torch.ones(1000, 1000)

    def work():
        doubled = base * 2
        return doubled + doubled.exp()  # doubled, its exp and the sum: three 4 MB tensors at once

    assert peak_allocated(work) == pytest.approx(3 * base.numel() * 4, rel=0.01)


@pytest.mark.parametrize(("model_name", "overrides"), [
    ("DiffGM", {}),  # CPD: the decoder's beam working set
    ("DiffGM", {"eval_level": "sid"}),  # the release's list instead of item scores
    ("DiffGM", {"decode_passes": 2}),  # two digits per pass
    ("ARGM", {}),  # left-to-right beam
])
def test_the_estimate_of_one_evaluation_batch_is_what_torch_allocates(tiny_config, model_name, overrides, monkeypatch):
    # One batch of all 24 test users at beam 512: the beam's working set (tens of MB; 5 MB with 2 passes, whose
    # second pass decodes the 32 beams the first reached) dominates. Every user decoded at once, as on a GPU: on a
    # CPU, CPD decodes in chunks of users, and the estimate, for all of them at once, is an upper bound.
    import recbole_diffgm.model.diffgm as diffgm

    monkeypatch.setattr(diffgm, "CPU_CPD_SEQUENCES", 2**20)
    config, model, trainer, *_, test = build(tiny_config, model_name, test_beam_size=512, eval_batch_size=64,
                                             **overrides)
    assert len(test) == 1
    with torch.no_grad():
        measured = peak_allocated(lambda: trainer.evaluate(test, load_best_model=False))
    estimate = memory.eval_batch_bytes(config, model, 64, max_users=test._dataset.user_num - 1)
    assert measured > 4 * 2**20  # far above anything else the evaluation allocates
    assert 0.8 < estimate / measured < 1.5, (estimate, measured)


def test_a_batch_that_cannot_fit_stops_the_run_before_its_first_epoch(tiny_config, monkeypatch):
    config, model, trainer, train, valid, _ = build(tiny_config, eval_batch_size=24)
    weights = sum(weight.numel() * 4 for weight in model.parameters())
    beam = max(config["test_beam_size"], config["valid_beam_size"])
    # Room for a batch of 10 users with the optimizer state, not for 11.
    room = memory.SAFETY * memory.eval_batch_bytes(config, model, 10, beam) + memory.OVERHEAD + 3 * weights + 1
    assert room < memory.SAFETY * memory.eval_batch_bytes(config, model, 11, beam) + memory.OVERHEAD + 3 * weights
    monkeypatch.setattr(memory, "available_memory", lambda device: (room, "a test's memory"))
    epochs = []
    monkeypatch.setattr(GenerativeTrainer, "_train_epoch", lambda self, *args, **kwargs: epochs.append(args))
    with pytest.raises(InputError, match=r"eval_batch_size 24: .* GiB is available \(a test's memory\); "
                                         r"set eval_batch_size 10 or less"):
        trainer.fit(train, valid, saved=False)
    assert not epochs

    # A saved model evaluated alone is checked at its first evaluation, at the test beam alone.
    _, _, trainer, *_ = build(tiny_config, eval_batch_size=24)
    with pytest.raises(InputError, match="eval_batch_size 24"):
        trainer.evaluate(valid, load_best_model=False)

    # eval_memory_check: false skips the check.
    config["eval_memory_check"] = False
    memory.check_eval_memory(config, model, 24, training=True)


def test_the_memory_left_under_a_cgroup_limit(tmp_path, monkeypatch):
    (tmp_path / "max").write_text(f"{2**30}\n")
    (tmp_path / "current").write_text(f"{600 * 2**20}\n")
    (tmp_path / "stat").write_text(f"anon 1\ninactive_file {100 * 2**20}\n")
    monkeypatch.setattr(memory, "_CGROUP_FILES", ((str(tmp_path / "max"), str(tmp_path / "current"),
                                                   str(tmp_path / "stat"), "inactive_file"),))
    assert memory.available_memory(torch.device("cpu")) == (2**30 - 500 * 2**20, "the cgroup memory limit")
    (tmp_path / "max").write_text("max\n")  # cgroup v2 without a limit: the system's available memory
    assert memory.available_memory(torch.device("cpu"))[1] == "available system memory"
