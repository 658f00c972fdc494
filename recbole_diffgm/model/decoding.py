"""Decoding semantic IDs from a masked-diffusion denoiser.

Confidence-guided Parallel Denoising (CPD, DiffGRM §5): every beam starts with all ``n`` slots masked; each
step scores every (beam, masked slot, code) candidate by the beam's score plus the code's log-probability
in that slot, and keeps the global top ``beam_size``. High-confidence digits are therefore committed first,
in an order each beam chooses for itself. The all-masked first step is the same for every beam, so it is
computed once per user. After ``n`` steps every beam is a complete SID; its score is the sum of the
conditional log-probabilities of its digits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

MASK = -1  # a slot whose code is not decided yet

# denoise(codes [B, G, n] with MASK where undecided) -> log-probabilities [B, G, n, K]
Denoiser = Callable[[torch.Tensor], torch.Tensor]


def fill_schedule(n_digit: int, passes: int) -> list[int]:
    """How many slots each of ``passes`` denoising passes fills: as even as possible, the larger fills last
    (the later passes see more of the SID, so their digits are the surer ones)."""
    return [n_digit // passes + (index >= passes - n_digit % passes) for index in range(passes)]


def cpd_beam_search(denoise: Denoiser, batch_size: int, n_digit: int, beam_size: int,
                    device: torch.device | str = "cpu", greedy_last_step: bool = False,
                    slot_order: torch.Tensor | None = None, passes: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confidence-guided parallel denoising with a beam over (slot, code) choices.

    Args:
        greedy_last_step: fill each beam's last slots with their best codes and keep the beams as they are (the
            released code), instead of a last global top-``beam_size`` over (beam, code) (the paper).
        slot_order: a fixed order in which the slots are filled, the same for every beam (the paper's
            "w/o CPD" control); ``None`` lets each beam fill its most confident slot first.
        passes: denoiser passes (default ``n_digit``: one digit per pass). With fewer, a pass that fills ``f``
            slots expands the beam on one (slot, code) as usual and fills each new beam's ``f - 1`` next most
            confident open slots with their best codes, from the same pass.

    Returns:
        ``(codes [B, beam, n], scores [B, beam], first_log_probs [B, n, K])``, beams sorted by score;
        ``first_log_probs`` is the all-masked step, reusable to score SIDs the beam did not reach.
    """
    codes = torch.full((batch_size, 1, n_digit), MASK, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, 1, device=device)
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
            codes, scores = _fill_best(codes, scores, log_probs.masked_fill(closed[..., None], float("-inf")), fill)
        else:
            expandable = closed if slot_order is None else closed | (slot_ids != slot_order[done])
            candidates = scores[:, :, None, None] + log_probs.masked_fill(expandable[..., None], float("-inf"))
            codes, scores, parent = _keep_best(codes, candidates, beam_size)
            if fill == 1:
                continue
            log_probs = log_probs.gather(1, parent[..., None, None].expand(-1, -1, *log_probs.shape[2:]))
            still_closed = closed.gather(1, parent[..., None].expand(-1, -1, n_digit)) | (codes != MASK)
            codes, scores = _fill_best(codes, scores, log_probs.masked_fill(still_closed[..., None], float("-inf")),
                                       fill - 1)
        scores, order = scores.sort(dim=1, descending=True)
        codes = codes.gather(1, order[..., None].expand_as(codes))
    return codes, scores, first_log_probs


def _keep_best(codes: torch.Tensor, candidates: torch.Tensor, beam_size: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The global top ``beam_size`` of the (beam, slot, code) ``candidates`` ``[B, G, n, K]``, as new beams,
    with the index of each new beam's parent ``[B, G']``."""
    _, _, n_digit, n_codes = candidates.shape
    width = min(beam_size, candidates[0].isfinite().sum().item())
    top_scores, flat = candidates.flatten(1).topk(width, dim=1)
    beam, slot, code = flat // (n_digit * n_codes), flat // n_codes % n_digit, flat % n_codes
    codes = codes.gather(1, beam[..., None].expand(-1, -1, n_digit)).clone()
    codes.scatter_(2, slot[..., None], code[..., None])
    return codes, top_scores, beam


def _fill_best(codes: torch.Tensor, scores: torch.Tensor, open_log_probs: torch.Tensor, count: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each beam fills its ``count`` most confident open slots (finite rows of ``open_log_probs``
    ``[B, G, n, K]``) with their best codes, adding their log-probabilities to its score."""
    best, best_code = open_log_probs.max(dim=-1)  # [B, G, n]
    best, slot = best.topk(count, dim=-1)
    return codes.scatter(2, slot, best_code.gather(2, slot)), scores + best.sum(dim=-1)


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
