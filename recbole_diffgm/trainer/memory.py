"""The peak memory of one evaluation batch, and a check that it fits before a run trains or evaluates.

A full-sort evaluation holds, per batch, RecBole's ``[users, n_items]`` score matrix and, for a model that decodes
semantic IDs with a beam, the decoder's working set: every (user, beam, digit slot) is a row of ``n_embd`` floats
through each decoder block, and every (user, beam, slot, code) a log-probability. At the paper's size (beam 256,
4 slots of 256 codes, d 256, FFN 1024) that is about 16 MiB per user, so ``eval_batch_size: 512`` needs some 8 GiB.
The counts below follow the code that allocates them (``decoding.cpd_beam_search``, ``SIDTransformer.decode_slots``,
``layers.DecoderBlock``, ``GenerativeRecommender.full_sort_predict``, RecBole's ``Collector``); ``tests/test_memory.py``
holds them to torch's own allocation count and ``benchmarks/eval_memory.py`` to the process's peak RSS.

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
# Bytes per (user, item) cell of the item-level stage: a generative model's full_sort_predict at its peak (merged
# SID scores, the digit-sum fallback and its temporaries, float64 tie-breaking: ``evaluation.item_scores``,
# ``break_ties``), about 53; a RecBole model's float32 scores. Both: RecBole's int32 position matrix (Collector).
GENERATIVE_CELL_BYTES = 53 + 4
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


def decode_bytes(model, users: int, beam_size: int) -> int:
    """Peak bytes of ``model.decode`` for ``users`` histories (a ``SIDTransformer``: DiffGM, ARGM, TIGER).

    Per decoder row (user x beam x digit slot), in floats, while a block runs: the denoiser's two input tensors
    (``DiffGM.denoise``: the code embeddings and the masked mix of them) and the previous step's log-probabilities
    and candidate scores (``cpd_beam_search``, K each); inside a block the largest of its three phases
    (``DecoderBlock.forward``: the block's input and residuals are held throughout):
    self-attention ``3D + 5A`` (LayerNorm, fused QKV, attention output, its head-merged copy, projection),
    cross-attention ``4D + 3A``, FFN ``4D + 2F`` (the residual ``cross`` is still held; GELU's input and output).
    Torch's CPU attention kernel is blocked (flash), so no ``[rows, keys]`` score matrix is ever held. After the
    pass: the new log-probabilities, their masked copy, the candidates and the old ones, ``4K`` (``5K`` when a pass
    fills several digits), and the beam's catalogue bookkeeping (``decoding.SIDPatterns``): the smallest matching SID
    of every candidate (int32, ``K + 1``) and its legality mask (``K / 4``); per state a step keeps, its matching SIDs
    and their codes while they are filtered, some ``7 M`` (``M``: the largest group of SIDs that share a code in one
    digit). CPD's beam holds distinct catalogue partial SIDs, at most ``SIDPatterns.widest_beam`` of them. The history's memory keys and values (``Attention.memory_kv``, every decoder block) are
    held throughout the decoding; the encoder's working set (``EncoderBlock``: padded attention, FFN; every history
    counted full) comes before them, so only the larger counts.
    """
    d_model = model.token_embedding.embedding_dim
    block = model.decoder[0]
    d_attn, d_inner = block.attn.d_attn, block.ffn[0].out_features
    n_digit, n_codes = model.n_digit, model.n_codes
    keys = model.position_embedding.num_embeddings  # history tokens: items (DiffGM, ARGM), digit tokens (TIGER)
    one_pass = getattr(model, "decode_mode", "cpd") == "one_pass"
    passes = getattr(model, "decode_passes", n_digit)  # the last pass decodes the beams the ones before reached
    cpd = getattr(model, "decode_mode", None) == "cpd"  # DiffGM's beam (ARGM and TIGER decode left to right)
    # CPD's beam holds distinct catalogue partial SIDs only: a small catalogue caps it below beam_size.
    states = model.sid_patterns.widest_beam(beam_size) if cpd else beam_size
    beams = max(1, model.rerank_size) if one_pass else min(states, (n_digit * n_codes) ** (passes - 1))
    in_block = max(3 * d_model + 5 * d_attn, 4 * d_model + 3 * d_attn, 4 * d_model + 2 * d_inner)
    group = model.sid_patterns.groups.shape[-1] if cpd else 0
    in_pass = 2 * d_model + 2 * n_codes + in_block
    after_pass = 5 * n_codes + (n_codes + 1 + n_codes // 4 if cpd else 0)
    # A pass that fills several digits fills them for every state it keeps; each state holds its matching SIDs.
    filled = states if cpd and passes < n_digit else beams
    # The candidates merged into states (decoding._keep_best, _merge): up to beam x digits of them, some ten
    # int64 tensors (scores, indices, keys and their sorted copies).
    merged = 20 * min(beam_size * n_digit, beams * n_digit * n_codes) if cpd else 0
    decoder = users * (max(beams * in_pass, filled * after_pass) * n_digit + states * 7 * group + merged)
    memory_kv = 2 * len(model.decoder) * users * keys * d_attn
    encoder = users * keys * max((n_digit + 2) * d_model, 3 * d_model + 6 * d_attn, 3 * d_model + 2 * d_inner)
    sid_scores = 3 * users * len(model.distinct_sids) if one_pass else 0  # digit_sum_scores' running sum
    return FLOAT * (max(encoder, memory_kv + decoder) + sid_scores)


def recbole_encoder_bytes(config, model, users: int) -> int:
    """A RecBole sequential model's forward pass for ``users`` full histories: the FFN of RecBole's
    ``TransformerEncoder`` holds four ``inner_size`` tensors per position (its erf GELU's temporaries) beside some
    six ``hidden_size`` ones (embeddings, LayerNorms, residuals); a GRU holds less. 0 for a general model."""
    hidden = config["hidden_size"] or config["embedding_size"] or 0
    return FLOAT * users * getattr(model, "max_seq_length", 0) * (4 * (config["inner_size"] or hidden) + 6 * hidden)


def eval_batch_bytes(config, model, eval_batch_size: int, beam_size: int | None = None,
                     max_users: int | None = None) -> int:
    """Peak extra bytes of one full-sort evaluation batch of ``model`` at ``eval_batch_size``, beyond what the
    process holds before it: the decoder's working set (``decode_bytes``, generative models at ``beam_size``,
    default their ``beam_size``), or after it the ``[users, n_items]`` stage, whichever is larger; a RecBole
    model's forward pass or its scores. ``max_users``: the dataset's users, the most a batch can hold."""
    # A generative model (it has a SID catalogue) and one that decodes with a beam (a decoder of SID digits) are
    # told by what the estimate reads: the trainer layer does not import the models.
    users = eval_batch_users(config, eval_batch_size, model.n_items, max_users)
    if not hasattr(model, "item_sid"):
        return max(recbole_encoder_bytes(config, model, users), users * model.n_items * RECBOLE_CELL_BYTES)
    beam_size = beam_size or model.beam_size
    if model.eval_level == "sid":  # the release's list (evaluation.first_hit_list): beam x beam comparisons
        scores = users * beam_size * beam_size * FLOAT
    else:
        scores = users * model.n_items * (GENERATIVE_CELL_BYTES + (3 * FLOAT if model.dense_weight is not None else 0))
    decoding = decode_bytes(model, users, beam_size) if hasattr(model, "decoder") else 0
    return max(decoding, scores)


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
