"""Evaluation of the generative models, in one place: how decoded beams become what RecBole's evaluator ranks.

A model decodes beams of SIDs (``codes [B, G, n]``, ``scores [B, G]``) and the per-digit log-probabilities of its
first decoding step (``first_log_probs [B, n, K]``: DiffGM's all-masked pass), which score any SID as the sum of
its digits (``digit_sum_scores``). ``eval_level`` says what a hit is:

- ``item``: every item ranked, the user's history included (RecBole 1.2.1 masks none for a sequential model),
  a hit is the exact item
  (``item_scores``: beams by their SID's merged score, ``merge_beams``; every other item below them by its
  digit sum; items that share a SID ordered exactly by ``break_ties``);
- ``sid``: the DiffGRM release's SID-level protocol (``first_hit_list``): the beam's SIDs by score, SIDs no item
  has and repeats dropped, nothing masked, a hit is the target's SID among the first k;
- ``sid_full_sort``: SID level ranked as RecBole ranks items: one item per SID (``sid_representatives``) scored as
  at item level, every SID in the full sort, nothing masked, a hit is the target's SID (``sid_masked`` before: the
  name claimed a masking it never did).

Metrics carry the level's prefix (``metric_prefix``: ``sid_ndcg@10``), so that no SID-level figure is read as an
item-level one. Models (``GenerativeRecommender``) and the trainer (``GenerativeTrainer``) both use this module.
"""

from __future__ import annotations

import torch

# eval_level -> the prefix of its metric names
METRIC_PREFIXES = {"item": "", "sid": "sid_", "sid_full_sort": "sid_full_sort_"}
# How the beams that reach one SID (in different fill orders) score it; "none" keeps every beam (generate only).
DEDUP_STRATEGIES = ("simple", "weighted")


def metric_prefix(eval_level: str) -> str:
    return METRIC_PREFIXES[eval_level]


def digit_sum_scores(first_log_probs: torch.Tensor, sids: torch.Tensor) -> torch.Tensor:
    """Every SID ``[S, n]`` scored from one pass's per-digit log-probabilities ``[B, n, K]``: the sum of its digits'
    log-probabilities ``[B, S]``, added digit by digit in order (so the two paths below agree to the bit).

    Without a gradient (every evaluation) the SIDs are bags of rows of the transposed ``[n K, B]`` table, which
    ``embedding_bag`` sums in contiguous rows: 50x faster than gathering columns on a CPU. Training keeps autograd's
    gather: its speed sets how many epochs a time budget allows, which the recorded runs depend on
    (``benchmark.RUN_CODE_VERSION``)."""
    n_digit, n_codes = sids.shape[1], first_log_probs.shape[2]
    if first_log_probs.requires_grad:
        return sum(first_log_probs[:, digit, sids[:, digit]] for digit in range(n_digit))
    table = first_log_probs.reshape(len(first_log_probs), n_digit * n_codes).T.contiguous()
    rows = sids + torch.arange(n_digit, device=sids.device) * n_codes
    return torch.nn.functional.embedding_bag(rows, table, mode="sum").T


def merge_beams(leaves: torch.Tensor, scores: torch.Tensor, n_sids: int, dedup: str) -> torch.Tensor:
    """The score of every catalogue SID ``[B, n_sids + 1]`` from beams ``leaves [B, G]`` (``PrefixTrie.lookup``,
    ``-1``: a SID no item has) with ``scores [B, G]``: ``-inf`` where no beam reached it; ``simple``: its best
    beam, ``weighted``: the log of the summed probability of its beams. The last column gathers the SIDs no item
    has."""
    leaves = torch.where(leaves >= 0, leaves, n_sids)
    best = scores.new_full((len(scores), n_sids + 1), float("-inf")).scatter_reduce_(1, leaves, scores, reduce="amax")
    if dedup == "weighted":  # log-sum-exp, shifted by each SID's best beam
        total = torch.zeros_like(best).scatter_add_(1, leaves, (scores - best.gather(1, leaves)).exp())
        best = best + total.log()
    return best


def item_scores(sid_scores: torch.Tensor, item_sid_index: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: each item scores its SID's ``sid_scores`` (``merge_beams``; ``item_sid_index [N]``: each item's
    column) where a beam reached it; every other item its ``fallback [B, N]`` score, shifted below the lowest
    reached one (a constant offset would lose float32 precision)."""
    reached = sid_scores[:, item_sid_index]
    hit = reached.isfinite()
    lowest_hit = torch.where(hit, reached, float("inf")).amin(dim=1, keepdim=True)
    shift = (fallback.amax(dim=1, keepdim=True) - lowest_hit + 1).clamp(min=0)  # 0 when nothing was reached
    return torch.where(hit, reached, fallback - shift)


def ranked_sids(sid_scores: torch.Tensor, distinct_sids: torch.Tensor, top_k: int
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per user, the ``top_k`` best reached SIDs ``[k, n]`` of ``distinct_sids`` and their scores ``[k]``, from
    ``merge_beams``'s ``sid_scores``: a recommendation list of distinct SIDs that some item has."""
    top_scores, top = sid_scores[:, :-1].topk(min(top_k, len(distinct_sids)), dim=1)
    return [(distinct_sids[sids[kept]], scores[kept])
            for sids, scores, kept in zip(top, top_scores, top_scores.isfinite())]


def first_hit_list(leaves: torch.Tensor, legal: torch.Tensor, rows: torch.Tensor,
                   target_leaves: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The DiffGRM release's SID-level list, as scores RecBole's evaluator can rank, and where each target is.

    ``leaves [B, G]``: each beam's catalogue SID (``PrefixTrie.lookup``), beams in score order; ``legal [B, G]``:
    beams whose SID some item has. As the release builds its list: beams that are not legal are dropped, a SID
    reached by an earlier beam is dropped (its best beam stays), the rest keep their order. Returns ``scores
    [B, G + 1]`` (kept beams ``G - position``; dropped ones ``-1``; the last column, ``-2``, stands for every SID
    the list misses) and, for each target (user ``rows [P]``, SID ``target_leaves [P]``), ``columns [P]``: the
    column of its SID in its user's list, else ``G``. Only the first match can be a hit, and recall is at most
    1, as in the release's evaluator.
    """
    count = leaves.shape[1]
    earlier = torch.ones(count, count, dtype=torch.bool, device=leaves.device).tril(-1)
    repeated = ((leaves[:, :, None] == leaves[:, None, :]) & legal[:, None, :] & earlier).any(dim=2)
    kept = legal & ~repeated
    position = kept.long().cumsum(dim=1) - 1
    scores = torch.where(kept, (count - position).float(), -1.0)
    scores = torch.cat([scores, scores.new_full((len(scores), 1), -2.0)], dim=1)
    hit = kept[rows] & (leaves[rows] == target_leaves[:, None])
    columns = torch.where(hit.any(dim=1), hit.long().argmax(dim=1), count)
    return scores, columns


def sid_representatives(item_sid_index: torch.Tensor) -> torch.Tensor:
    """``eval_level: sid_full_sort`` ranks one item per SID: for every item ``[N]``, the smallest item id of its SID
    (``item_sid_index [N]``), which stands for the SID and whose column holds the SID's score."""
    first_of_sid = torch.full((int(item_sid_index.max()) + 1,), len(item_sid_index)).scatter_reduce(
        0, item_sid_index, torch.arange(len(item_sid_index)), reduce="amin")
    return first_of_sid[item_sid_index]


def group_ranks(groups: torch.Tensor, popularity: torch.Tensor) -> torch.Tensor:
    """Each item's place ``[N]`` (0 = first) among the items of its group (``groups [N]``, e.g. its SID): by
    ``popularity`` (descending), then item id (ascending)."""
    items = torch.arange(len(groups))
    order = torch.argsort(-popularity, stable=True)  # equal popularity keeps item id order
    order = order[torch.argsort(groups[order], stable=True)]
    sorted_groups = groups[order]
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    first = torch.cummax(torch.where(starts, items, 0), dim=0).values  # the position where each run of a group starts
    ranks = torch.empty_like(groups)
    ranks[order] = items - first
    return ranks


def break_ties(scores: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """``scores [B, N]`` (float32; items of a group share one) -> float64 scores that keep every float32 order and
    order the items of a group by ``ranks [N]`` exactly: item ``r`` of a group steps down by ``r / (max r + 1)`` of
    the gap to the next lower float32, so it never passes a lower score (a fixed epsilon is lost in float32 at
    large magnitudes, or can pass one). Unchanged, in float32, when no two items share a group."""
    if not ranks.any():  # no two items share a group (unique SIDs): nothing to order, float32 keeps every order
        return scores
    gap = (scores - torch.nextafter(scores, scores.new_tensor(float("-inf")))).double()
    step = ranks.double() / (int(ranks.max()) + 1)
    return torch.where(scores.isfinite(), scores.double() - gap * step, scores.double())
