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


def cpd_beam_search(denoise: Denoiser, batch_size: int, n_slots: int, beam_size: int,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Confidence-guided parallel denoising with a beam over (slot, code) choices.

    Returns:
        ``(codes [B, beam, n], scores [B, beam], first_log_probs [B, n, K])``, beams sorted by score;
        ``first_log_probs`` is the all-masked step, reusable to score SIDs the beam did not reach.
    """
    codes = torch.full((batch_size, 1, n_slots), MASK, dtype=torch.long, device=device)
    scores = torch.zeros(batch_size, 1, device=device)
    first_log_probs = None
    for _ in range(n_slots):
        log_probs = denoise(codes)  # [B, G, n, K]
        if first_log_probs is None:
            first_log_probs = log_probs[:, 0]
        n_codes = log_probs.shape[-1]
        candidates = scores[:, :, None, None] + log_probs.masked_fill((codes != MASK)[..., None], float("-inf"))
        width = min(beam_size, candidates[0].isfinite().sum().item())
        top_scores, flat = candidates.flatten(1).topk(width, dim=1)
        beam, slot, code = flat // (n_slots * n_codes), flat // n_codes % n_slots, flat % n_codes
        codes = codes.gather(1, beam[..., None].expand(-1, -1, n_slots)).clone()
        codes.scatter_(2, slot[..., None], code[..., None])
        scores = top_scores
    return codes, scores, first_log_probs
