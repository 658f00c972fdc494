"""Decoding semantic IDs from a masked-diffusion denoiser.

Confidence-guided Parallel Denoising (CPD, DiffGRM §5): every beam starts with all ``n`` slots masked; each
step scores every (beam, masked slot, code) candidate by the beam's score plus the code's log-probability
in that slot, and keeps the best ``beam_size`` states. High-confidence digits are therefore committed first,
in an order each beam chooses for itself. The all-masked first step is the same for every beam, so it is
computed once per user. After ``n`` steps every beam is a complete SID; its score is the sum of the
conditional log-probabilities of its digits.

The beam spends its width on distinct SIDs that exist (``SIDPatterns``): a candidate is kept only when some
catalogue SID completes it, in whatever order its digits were filled, and the copies of one partial SID reached in
different fill orders merge into one state (the best copy's score, or with ``weighted`` the log of their summed
probabilities).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from math import comb

import torch

MASK = -2  # a slot whose code is not decided yet (not the padding item's code, data.dataset.PADDING_CODE)

# denoise(codes [B, G, n] with MASK where undecided) -> log-probabilities [B, G, n, K]
Denoiser = Callable[[torch.Tensor], torch.Tensor]


def fill_schedule(n_digit: int, passes: int) -> list[int]:
    """How many slots each of ``passes`` denoising passes fills: as even as possible, the larger fills last
    (the later passes see more of the SID, so their digits are the surer ones)."""
    return [n_digit // passes + (index >= passes - n_digit % passes) for index in range(passes)]


class SIDPatterns:
    """Which partial SIDs (any digits fixed, the others masked) some catalogue SID completes, in any fill order.

    A partial SID is followed through decoding with the set of catalogue SIDs that match it: row ``s`` of the
    distinct, sorted ``sids`` (``GenerativeRecommender.distinct_sids``) is SID ``s``. The set of a partial SID with
    one digit fixed is a precomputed group (``groups [n, K, M]``: per digit and code, its SIDs ascending, padded
    with the sentinel ``n_sids``); each further digit filters it. A partial SID is legal when its set is not empty,
    and the set's smallest SID and the fixed slots identify it (``state_keys``): two fill orders that reach the same
    partial SID give the same key, so the beam merges them.
    """

    def __init__(self, sids: torch.Tensor, n_codes: int):
        n_sids, n_digit = sids.shape
        self.n_sids, self.n_digit, self.n_codes = n_sids, n_digit, n_codes
        # The sentinel row n_sids has code n_codes in every digit: scattered into a spare column, never a code.
        self.sids = torch.cat([sids, sids.new_full((1, n_digit), n_codes)])
        # The same codes digit by digit, int16: a beam looks up one digit of thousands of SIDs at a time, and a
        # compact row per digit stays in cache where [n_sids, n] int64 does not (the beam's bookkeeping at 1M
        # random 8-digit SIDs, beam 32: 69 -> 19 ms per user; benchmarks/sid_patterns.py).
        self.digit_codes = self.sids.T.to(torch.int16).contiguous()  # [n, n_sids + 1]
        self._widest: dict[int, int] = {}  # widest_beam's answers by beam size
        counts = torch.stack([torch.bincount(digit, minlength=n_codes) for digit in sids.T])  # [n, K]
        # int32: the sets are the beam's largest working tensors ([B, G, M] and the [B, G, n, K] first_sids)
        self.groups = sids.new_full((n_digit, n_codes, int(counts.max())), n_sids, dtype=torch.int32)
        for digit, codes in enumerate(sids.T):
            order = torch.argsort(codes, stable=True)  # by code, each code's SIDs ascending
            starts = counts[digit].cumsum(0) - counts[digit]
            rank = torch.arange(n_sids, device=sids.device) - starts[codes[order]]
            self.groups[digit, codes[order], rank] = order.int()

    def widest_beam(self, beam_size: int) -> int:
        """The most states a beam of ``beam_size`` can hold at any step: ``beam_size``, or fewer when the catalogue has
        fewer distinct partial SIDs with that many digits fixed (counted exactly for up to 12 digits, else bounded by
        one partial SID per catalogue SID and set of fixed slots)."""
        if beam_size in self._widest:  # the memory check asks at every fit and evaluation: count once
            return self._widest[beam_size]
        sids, widest = self.sids[:-1], 1
        for fixed in range(1, self.n_digit + 1):
            if self.n_digit <= 12:
                states = sum(len(sids[:, list(slots)].unique(dim=0)) for slots in combinations(range(self.n_digit), fixed))
            else:
                states = comb(self.n_digit, fixed) * self.n_sids
            widest = max(widest, min(beam_size, states))
            if widest == beam_size:
                break
        self._widest[beam_size] = widest
        return widest

    def _on(self, device: torch.device) -> None:
        if self.sids.device != device:  # the model moved to another device after it was built
            self.sids, self.groups = self.sids.to(device), self.groups.to(device)
            self.digit_codes = self.digit_codes.to(device)

    def first_sids(self, members: torch.Tensor | None) -> torch.Tensor:
        """For beams whose partial SIDs match the SIDs ``members [B, G, M]`` (ascending, sentinel-padded; ``None``:
        every SID, the all-masked start), ``[B, G, n, K]``: the smallest matching SID once digit ``d`` is set to code
        ``c``, or ``n_sids`` where none matches (the candidate is illegal)."""
        if members is None:
            return self.groups[None, None, :, :, 0]
        self._on(members.device)
        first = members.new_full((*members.shape[:2], self.n_digit, self.n_codes + 1), self.n_sids)
        rows = members.long()
        for digit in range(self.n_digit):
            first[:, :, digit].scatter_reduce_(2, self.digit_codes[digit][rows].long(), members, reduce="amin")
        return first[..., :-1]

    def narrow(self, members: torch.Tensor | None, slot: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """The SIDs that still match after each beam sets ``slot [B, G]`` to ``code [B, G]``: ``members`` (as in
        ``first_sids``, of each new beam's parent) filtered, ascending, padded to the longest set in the batch."""
        self._on(slot.device)
        if members is None:
            return self.groups[slot, code]
        kept = torch.where(self.digit_codes[slot[..., None], members.long()] == code[..., None], members, self.n_sids)
        kept = kept.sort(dim=-1).values
        width = max(1, int((kept < self.n_sids).sum(-1).max()))
        return kept[..., :width]

    def state_keys(self, first_sid: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
        """A key per partial SID, equal exactly when the partial SIDs are: its smallest matching SID and the bit
        mask of its fixed slots ``filled`` (int64; at most ``n_sids * 2 ** n`` stays far below 2 ** 63)."""
        return first_sid.long() * (1 << self.n_digit) + filled


def cpd_beam_search(denoise: Denoiser, patterns: SIDPatterns, batch_size: int, beam_size: int,
                    device: torch.device | str = "cpu", greedy_last_step: bool = False,
                    slot_order: torch.Tensor | None = None, passes: int | None = None, weighted: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confidence-guided parallel denoising with a beam over (slot, code) choices, on catalogue SIDs only.

    Args:
        patterns: the catalogue's SIDs (``SIDPatterns``): a beam state is a partial SID that one of them completes.
        greedy_last_step: fill each beam's last slots with their best legal codes and keep the beams as they are (the
            released code), instead of a last selection of the best ``beam_size`` (the paper).
        slot_order: a fixed order in which the slots are filled, the same for every beam (the paper's
            "w/o CPD" control); ``None`` lets each beam fill its most confident slot first.
        passes: denoiser passes (default ``n_digit``: one digit per pass). With fewer, a pass that fills ``f``
            slots expands the beam on one (slot, code) as usual and fills each new beam's ``f - 1`` next most
            confident open slots with their best legal codes, one after the other, from the same pass.
        weighted: the copies of a partial SID merge to the log of their summed probabilities (``dedup_strategy:
            weighted``) instead of the best copy's score.

    Returns:
        ``(codes [B, beam, n], scores [B, beam], first_log_probs [B, n, K])``, distinct catalogue SIDs sorted by
        score (``-inf``: no state left for that beam, fewer SIDs than ``beam_size`` match); ``first_log_probs`` is
        the all-masked step, reusable to score SIDs the beam did not reach.
    """
    n_digit = patterns.n_digit
    codes = torch.full((batch_size, 1, n_digit), MASK, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, 1, device=device)
    members = None  # the catalogue SIDs each beam's partial SID matches (SIDPatterns): at first, all of them
    first_log_probs = None
    fills = fill_schedule(n_digit, passes or n_digit)
    slot_ids = torch.arange(n_digit, device=device)
    for step, fill in enumerate(fills):
        log_probs = denoise(codes)  # [B, G, n, K]
        if first_log_probs is None:
            first_log_probs = log_probs[:, 0]
        closed = codes != MASK
        if slot_order is not None:  # this pass may fill only its slots of the order, the first by the beam
            done = sum(fills[:step])
            closed = closed | ~torch.isin(slot_ids, slot_order[done: done + fill])
        if greedy_last_step and step == len(fills) - 1 and step > 0:
            codes, scores, members = _fill_best(patterns, codes, scores, members, log_probs, closed, fill, weighted)
        else:
            expandable = closed if slot_order is None else closed | (slot_ids != slot_order[done])
            first_sid = patterns.first_sids(members)
            candidates = scores[:, :, None, None] + log_probs.masked_fill(
                expandable[..., None] | (first_sid == patterns.n_sids), float("-inf"))
            parent, slot, code, scores = _keep_best(patterns, codes, candidates, first_sid, beam_size, weighted)
            codes = codes.gather(1, parent[..., None].expand(-1, -1, n_digit)).scatter(2, slot[..., None],
                                                                                        code[..., None])
            members = patterns.narrow(None if members is None else _rows(members, parent), slot, code)
            if fill > 1:
                codes, scores, members = _fill_best(patterns, codes, scores, members, _rows(log_probs, parent),
                                                    _rows(closed, parent) | (codes != MASK), fill - 1, weighted)
        scores, order = scores.sort(dim=1, descending=True)
        order = order[:, : max(1, int(scores.isfinite().sum(1).max()))]  # no beam left for any user: dropped
        codes, scores, members = _rows(codes, order), scores[:, : order.shape[1]], _rows(members, order)
    return codes, scores, first_log_probs


def _rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tensor [B, G, ...]`` -> its beams ``index [B, G']`` ``[B, G', ...]``."""
    return tensor.gather(1, index.view(*index.shape, *[1] * (tensor.dim() - 2)).expand(-1, -1, *tensor.shape[2:]))


def _filled_mask(codes: torch.Tensor) -> torch.Tensor:
    """``[B, G]``: the bit mask of each beam's fixed slots."""
    bits = 1 << torch.arange(codes.shape[-1], device=codes.device)
    return ((codes != MASK) * bits).sum(dim=-1)


def _keep_best(patterns: SIDPatterns, codes: torch.Tensor, candidates: torch.Tensor, first_sid: torch.Tensor,
               beam_size: int, weighted: bool) -> tuple[torch.Tensor, ...]:
    """The best ``beam_size`` distinct partial SIDs among the (beam, slot, code) ``candidates [B, G, n, K]`` (``-inf``:
    not a candidate), each copy of one partial SID merged into its best (``_merge``). Returns each new beam's
    ``(parent, slot, code, score)``, ``[B, G']`` each.

    A partial SID with ``t`` fixed slots has at most ``t`` copies among the candidates (one per parent that lacks one
    of its slots), so the ``beam_size * t`` best candidates hold the best copy of each of the best ``beam_size``
    partial SIDs: merging those alone is exact for the best copy's score; with ``weighted``, a copy below all of them
    is not added (with a beam covering every state there is none).
    """
    _, _, n_digit, n_codes = candidates.shape
    copies = 1 + int((codes != MASK).sum(-1).max())
    top_scores, flat = candidates.flatten(1).topk(min(beam_size * copies, candidates[0].numel()), dim=1)
    parent, slot, code = flat // (n_digit * n_codes), flat // n_codes % n_digit, flat % n_codes
    users = torch.arange(len(flat), device=flat.device)[:, None]
    keys = patterns.state_keys(first_sid.expand_as(candidates)[users, parent, slot, code],
                               _filled_mask(codes).gather(1, parent) | (1 << slot))
    top_scores, kept = _merge(keys, top_scores, beam_size, weighted)
    return parent.gather(1, kept), slot.gather(1, kept), code.gather(1, kept), top_scores


def _merge(keys: torch.Tensor, scores: torch.Tensor, beam_size: int, weighted: bool
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """States ``[B, C]`` (``keys``, ``scores`` in descending order) merged by key: ``(scores, index) [B, G']`` of the
    best ``beam_size`` distinct states, each at its best copy's index with its merged score (``-inf``: no state)."""
    keys = torch.where(scores.isfinite(), keys, -1 - torch.arange(keys.shape[1], device=keys.device))  # none merge
    keys, order = keys.sort(dim=1, stable=True)  # copies of a state: adjacent, the best first
    sorted_scores = scores.gather(1, order)
    first = torch.ones_like(keys, dtype=torch.bool)
    first[:, 1:] = keys[:, 1:] != keys[:, :-1]
    merged = sorted_scores
    if weighted:  # log-sum-exp over each run of copies, shifted by its best
        positions = torch.arange(keys.shape[1], device=keys.device)
        best = sorted_scores.gather(1, torch.where(first, positions, 0).cummax(dim=1).values)
        run = first.long().cumsum(dim=1) - 1
        shifted = torch.where(sorted_scores.isfinite(), (sorted_scores - best).exp(), 0.0)
        total = torch.zeros_like(sorted_scores).scatter_add_(1, run, shifted).gather(1, run)
        merged = torch.where(best.isfinite(), best + total.log(), best)
    top_scores, top = merged.masked_fill(~first, float("-inf")).topk(min(beam_size, keys.shape[1]), dim=1)
    return top_scores, order.gather(1, top)


def _fill_best(patterns: SIDPatterns, codes: torch.Tensor, scores: torch.Tensor, members: torch.Tensor,
               log_probs: torch.Tensor, closed: torch.Tensor, count: int, weighted: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each beam fills ``count`` of its open slots (``~closed [B, G, n]``) one after the other, each time the most
    confident legal (slot, code) of ``log_probs [B, G, n, K]`` (one pass's), adding its log-probability to its score;
    beams that end on the same partial SID then merge (``_merge``)."""
    for _ in range(count):
        first_sid = patterns.first_sids(members)
        open_log_probs = log_probs.masked_fill(closed[..., None] | (first_sid == patterns.n_sids), float("-inf"))
        best, flat = open_log_probs.flatten(2).max(dim=-1)  # [B, G]
        slot, code = flat // patterns.n_codes, flat % patterns.n_codes
        codes = codes.scatter(2, slot[..., None], code[..., None])
        closed = closed.scatter(2, slot[..., None], True)
        scores, members = scores + best, patterns.narrow(members, slot, code)
    keys = patterns.state_keys(members[..., 0], _filled_mask(codes))
    scores, order = scores.sort(dim=1, descending=True)
    scores, kept = _merge(keys.gather(1, order), scores, scores.shape[1], weighted)
    kept = order.gather(1, kept)
    return _rows(codes, kept), scores, _rows(members, kept)


def guided_sid_scores(denoise: Denoiser, sids: torch.Tensor, first_log_probs: torch.Tensor) -> torch.Tensor:
    """CPD's score of given SIDs ``[B, G, n]``: each fills its own digits most confident first, one per pass, and
    scores the sum of their conditional log-probabilities ``[B, G]`` (the all-masked pass is ``first_log_probs``)."""
    codes = torch.full_like(sids, MASK)
    scores = sids.new_zeros(sids.shape[:2], dtype=first_log_probs.dtype)
    log_probs = first_log_probs[:, None].expand(-1, sids.shape[1], -1, -1)
    for step in range(sids.shape[2]):
        if step > 0:
            log_probs = denoise(codes)
        own = log_probs.gather(3, sids[..., None])[..., 0].masked_fill(codes != MASK, float("-inf"))  # [B, G, n]
        best, slot = own.max(dim=-1, keepdim=True)
        codes = codes.scatter(2, slot, sids.gather(2, slot))
        scores = scores + best[..., 0]
    return scores


class PrefixTrie:
    """The SID prefixes of a catalogue, for decoding constrained to SIDs that some item has.

    A prefix of ``t`` digits is a node id at depth ``t``; node ``p``'s child by code ``c`` exists when the key
    ``p * K + c`` is among the sorted keys of depth ``t + 1``, and its node id is that key's index there. Keys
    stay below ``n_items * K`` at every depth, so SIDs of any length fit in int64.
    """

    def __init__(self, sids: torch.Tensor, n_codes: int):
        self.n_codes = n_codes
        self.keys = []
        node = torch.zeros(len(sids), dtype=torch.long, device=sids.device)
        for digit in sids.T:
            key = node * n_codes + digit
            self.keys.append(key.unique())  # sorted
            node = torch.searchsorted(self.keys[-1], key)

    def _on(self, device: torch.device) -> None:
        if self.keys[0].device != device:  # the model moved to another device after it was built
            self.keys = [keys.to(device) for keys in self.keys]

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """SIDs ``[..., n]`` -> their leaf ids ``[...]`` (one per distinct catalogue SID, ``0..n_sids - 1``, in
        sorted order), or -1 for a SID that no item has."""
        self._on(codes.device)
        node = torch.zeros(codes.shape[:-1], dtype=torch.long, device=codes.device)
        found = torch.ones_like(node, dtype=torch.bool)
        for keys, digit in zip(self.keys, codes.unbind(-1)):
            key = node * self.n_codes + digit
            node = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
            found &= keys[node] == key
        return torch.where(found, node, -1)

    @property
    def n_sids(self) -> int:
        return len(self.keys[-1])

    def children(self, depth: int, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For prefixes ``node`` (any shape) of ``depth`` digits: which of the K next codes extend them to a
        catalogue prefix ``[..., K]``, and the child node ids (meaningless where not allowed)."""
        self._on(node.device)
        keys = self.keys[depth]
        wanted = node[..., None] * self.n_codes + torch.arange(self.n_codes, device=node.device)
        child = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
        return keys[child] == wanted, child


def autoregressive_beam_search(next_log_probs: Callable[[torch.Tensor], torch.Tensor], batch_size: int, n_digit: int,
                               beam_size: int, device: torch.device | str = "cpu", trie: PrefixTrie | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-to-right beam search over SID digits, optionally constrained to the prefixes in ``trie``.

    Args:
        next_log_probs: prefixes ``[B, G, t]`` -> log-probabilities ``[B, G, K]`` of digit ``t``.

    Returns:
        ``(codes [B, beam, n], scores [B, beam], first_log_probs [B, n, K])`` as ``cpd_beam_search``:
        ``first_log_probs`` holds digit 0's log-probabilities and zeros, so SIDs the beam missed rank by their
        first digit. A beam with no allowed continuation scores ``-inf``.
    """
    codes = torch.zeros(batch_size, 1, 0, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, 1, device=device)
    node = torch.zeros(batch_size, 1, dtype=torch.long, device=device)
    first_log_probs = None
    for step in range(n_digit):
        log_probs = next_log_probs(codes)  # [B, G, K]
        if first_log_probs is None:
            first_log_probs = torch.zeros(batch_size, n_digit, log_probs.shape[-1], device=device)
            first_log_probs[:, 0] = log_probs[:, 0]
        candidates = scores[..., None] + log_probs
        if trie is not None:
            allowed, child = trie.children(step, node)
            candidates = candidates.masked_fill(~allowed, float("-inf"))
        n_codes = log_probs.shape[-1]
        scores, flat = candidates.flatten(1).topk(min(beam_size, candidates[0].numel()), dim=1)
        beam, code = flat // n_codes, flat % n_codes
        codes = torch.cat([codes.gather(1, beam[..., None].expand(-1, -1, step)), code[..., None]], dim=2)
        if trie is not None:
            node = child.flatten(1).gather(1, flat)
    return codes, scores, first_log_probs
