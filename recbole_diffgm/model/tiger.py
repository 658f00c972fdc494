r"""TIGER
################################################

Reference:
    Shashank Rajput et al. "Recommender Systems with Generative Retrieval." NeurIPS 2023.

Items are residual semantic IDs (RQ-VAE, 3 levels of 256 codes; ``sid_quantizer: rq_kmeans`` as an option)
plus a 4th digit that numbers the items sharing them (``sid_collision: disambiguate``), so each SID is one
item. A T5-style encoder-decoder (pre-LayerNorm blocks, heads of their own width: 6 x 64 on d 128) reads the
history as a sequence of digit tokens and generates the next item's digits left to right (``ARGM``'s
causal decoder and teacher forcing); the beam is constrained by a trie to SIDs that exist.

Differences from the paper, kept small and explicit: learned absolute token positions instead of T5's
relative position buckets, and no hashed user-id token.
"""

from __future__ import annotations

import torch
from torch import nn

from recbole_diffgm.model.argm import ARGM


class TIGER(ARGM):
    def init_history_embedding(self, config) -> None:
        self.position_embedding = nn.Embedding(self.max_seq_length * self.n_digit, config["n_embd"])

    def embed_history(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """History ``[B, L]`` -> packed digit-token vectors ``[T, D]`` and their mask ``[B, L * n]``."""
        tokens = self.item_tokens[item_seq].flatten(1)  # [B, L * n]: item 1's digits, item 2's digits, ...
        mask = (item_seq > 0).repeat_interleave(self.n_digit, dim=1)
        positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)[mask]
        return self.token_embedding(tokens[mask]) + self.position_embedding(positions), mask
