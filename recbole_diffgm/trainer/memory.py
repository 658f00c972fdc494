"""The peak memory of one evaluation batch, and a check that it fits before a run trains or evaluates.

A full-sort evaluation holds, per batch, RecBole's ``[users, n_items]`` score matrix and, for a model that decodes
semantic IDs with a beam, the decoder's working set: every (user, beam, digit slot) is a row of ``n_embd`` floats
through each decoder block, and every (user, beam, slot, code) a log-probability. At the paper's size (beam 256,
4 slots of 256 codes, d 256, FFN 1024) that is about 16 MiB per user, so ``eval_batch_size: 512`` needs some 8 GiB.
A generative model counts its own batch (``GenerativeRecommender.eval_batch_bytes``, ``SIDTransformer.decode_bytes``:
the counts follow the code that allocates them); this module counts RecBole's models and compares the estimate with
what is free. ``tests/test_memory.py`` holds the counts to torch's own allocation count and
``benchmarks/eval_memory.py`` to the process's peak RSS.

``check_eval_memory`` compares that estimate with the memory this process can still get (a cgroup's limit, else
the system's available memory; on CUDA the device's free memory) and raises ``InputError`` at a trainer's first
``fit`` or ``evaluate`` (``check_trainer_memory``), instead of the OS killing the run at its first validation or at
its test. ``eval_memory_check: false`` turns it off.
"""

from __future__ import annotations

from logging import getLogger
from pathlib import Path

import psutil
import torch

from recbole_diffgm.errors import InputError

FLOAT = 4  # bytes of a float32; the counts below are in float32 values unless they say otherwise
# The process's RSS grows by more than the bytes torch allocates (allocator slack, freed pages not yet returned):
# the check asks for this much more than the estimate (results/eval-memory.md measures the ratio).
SAFETY = 1.25
OVERHEAD = 256 * 2**20  # and a first evaluation's fixed costs (thread pools, kernels' buffers): about 0.12 GiB here
# Bytes per (user, item) cell of a RecBole model's scores: float32, and RecBole's int32 position matrix (Collector).
RECBOLE_CELL_BYTES = 4 + 4
_CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat",
                  "inactive_file"),  # cgroup v2
                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                  "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file"))  # cgroup v1


def eval_batch_users(config, eval_batch_size: int, n_items: int, max_users: int | None = None) -> int:
    """Users in one full-sort batch: ``eval_batch_size`` for a sequential model; for a general one RecBole's
    ``FullSortEvalDataLoader`` counts ``eval_batch_size`` in (user, item) pairs, at least one user. At most
    ``max_users``, the dataset's users."""
    from recbole.utils import ModelType

    users = eval_batch_size if config["MODEL_TYPE"] == ModelType.SEQUENTIAL else max(1, eval_batch_size // n_items)
    return users if max_users is None else min(users, max_users)


def recbole_encoder_bytes(config, model, users: int) -> int:
    """A RecBole sequential model's forward pass for ``users`` full histories: the FFN of RecBole's
    ``TransformerEncoder`` holds four ``inner_size`` tensors per position (its erf GELU's temporaries) beside some
    six ``hidden_size`` ones (embeddings, LayerNorms, residuals); a GRU holds less. 0 for a general model."""
    hidden = config["hidden_size"] or config["embedding_size"] or 0
    return FLOAT * users * getattr(model, "max_seq_length", 0) * (4 * (config["inner_size"] or hidden) + 6 * hidden)


def eval_batch_bytes(config, model, eval_batch_size: int, beam_size: int | None = None,
                     max_users: int | None = None) -> int:
    """Peak extra bytes of one full-sort evaluation batch of ``model`` at ``eval_batch_size``, beyond what the
    process holds before it: a generative model's own count at ``beam_size`` (default its test beam:
    ``GenerativeRecommender.eval_batch_bytes``), a RecBole model's forward pass or its scores. ``max_users``: the
    dataset's users, the most a batch can hold."""
    users = eval_batch_users(config, eval_batch_size, model.n_items, max_users)
    if getattr(model, "generates_sids", False):  # it counts its own decoding (GenerativeRecommender.eval_batch_bytes)
        return model.eval_batch_bytes(users, beam_size)
    return max(recbole_encoder_bytes(config, model, users), users * model.n_items * RECBOLE_CELL_BYTES)


def available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes this process can still allocate on ``device``, and where the figure comes from: on CUDA the free
    device memory plus what torch's cache holds unused; on the CPU the smaller of the system's available memory
    and what the cgroup's limit leaves (its usage less reclaimable page cache, as the OOM killer counts it)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), "free CUDA memory"
    available, source = psutil.virtual_memory().available, "available system memory"
    for limit_file, usage_file, stat_file, inactive_key in _CGROUP_FILES:
        try:
            limit, usage = int(Path(limit_file).read_text()), int(Path(usage_file).read_text())
            stat = dict(line.split() for line in Path(stat_file).read_text().splitlines())
        except (OSError, ValueError):  # no such cgroup, or v2's "max": no limit
            continue
        left = limit - (usage - int(stat.get(inactive_key, 0)))
        if limit < 2**60 and left < available:  # v1 writes "no limit" as a huge number
            available, source = left, "the cgroup memory limit"
        break
    return available, source


def largest_fitting_batch(config, model, eval_batch_size: int, budget: float, beam_size: int | None = None) -> int:
    """The largest ``eval_batch_size`` up to the given one whose batch needs at most ``budget`` bytes (0: none)."""
    low, high = 0, eval_batch_size  # the estimate grows with the batch: bisect
    while low < high:
        middle = (low + high + 1) // 2
        fits = eval_batch_bytes(config, model, middle, beam_size) <= budget
        low, high = (middle, high) if fits else (low, middle - 1)
    return low


def check_eval_memory(config, model, eval_batch_size: int, max_users: int | None = None, training: bool = False) -> None:
    """Raise ``InputError`` if one evaluation batch at ``eval_batch_size`` would not fit in memory, naming the
    estimate, what is available and the largest ``eval_batch_size`` that fits; logs the estimate otherwise.

    ``max_users``: the dataset's users, so that a batch larger than the data is counted as the data. With
    ``training`` (a run that trains, validates, then tests), a generative model is checked at the larger of
    ``valid_beam_size`` and its test beam, and what training allocates before the first validation counts too:
    gradients and AdamW's two moments, three copies of the weights (the weights themselves are already held).
    """
    if not config["eval_memory_check"] or not hasattr(model, "n_items"):  # off, or no full-sort evaluation
        return
    beam_size = getattr(model, "beam_size", None)
    if beam_size and training:
        beam_size = max(beam_size, config["valid_beam_size"] or 0)
    pending = 3 * sum(weight.numel() * weight.element_size() for weight in model.parameters()) if training else 0
    needed = SAFETY * eval_batch_bytes(config, model, eval_batch_size, beam_size, max_users) + OVERHEAD + pending
    available, source = available_memory(next(model.parameters()).device)
    at_beam = f" at beam {beam_size}" if beam_size else ""
    if needed > available:
        budget = (available - OVERHEAD - pending) / SAFETY
        fits = largest_fitting_batch(config, model, eval_batch_size, budget, beam_size)
        advice = f"set eval_batch_size {fits} or less" if fits else "no eval_batch_size fits" + (
            ": lower the beam" if beam_size else "")
        raise InputError(f"eval_batch_size {eval_batch_size}: one evaluation batch of {config['model']}{at_beam} needs "
                         f"about {needed / 2**30:.2f} GiB (the estimate x {SAFETY} + {OVERHEAD / 2**30:.2f} GiB"
                         f"{', with the optimizer state' if pending else ''}), but {available / 2**30:.2f} GiB is "
                         f"available ({source}); {advice} (or eval_memory_check: false to skip this check)")
    getLogger().info(f"evaluation memory: about {needed / 2**30:.2f} GiB for a batch of eval_batch_size "
                     f"{eval_batch_size}{at_beam}; {available / 2**30:.2f} GiB available ({source})")


def check_trainer_memory(trainer, data, training: bool) -> None:
    """``check_eval_memory`` for ``trainer`` once, at its first ``fit`` (``training``) or ``evaluate``: before any
    epoch or batch runs; ``data``: one of its data loaders (for the dataset's user count)."""
    if getattr(trainer, "_eval_memory_checked", False) or data is None:
        return
    trainer._eval_memory_checked = True
    check_eval_memory(trainer.config, trainer.model, trainer.config["eval_batch_size"],
                      data._dataset.user_num - 1, training)  # user 0 is RecBole's padding
