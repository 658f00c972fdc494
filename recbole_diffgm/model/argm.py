r"""ARGM
################################################

The autoregressive control for DiffGM (the released DiffGRM code's ``AR_GRM``): the same semantic IDs,
history encoder and decoder blocks (``SIDTransformer``), but the decoder is causal. It reads a learned
start vector and the target's digits left to right, is trained by teacher forcing (cross-entropy averaged
over the digits), and decodes with a left-to-right beam. Trained on DiffGM's parallel OPQ digits, it shows
what masked diffusion (OCN training, CPD decoding) adds over left-to-right decoding of the same codes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from recbole_diffgm.model.decoding import autoregressive_beam_search
from recbole_diffgm.model.sid_transformer import SIDTransformer


class ARGM(SIDTransformer):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        # With constrained_decoding the beam only extends prefixes of catalogue SIDs (TIGER's trie).
        self.trie = self.sid_trie if config["constrained_decoding"] else None
        self.start_embedding = nn.Parameter(torch.zeros(config["n_embd"]))
        self.apply(self._init_weights)
        nn.init.normal_(self.start_embedding, std=0.02)

    def decoder_inputs(self, prefix: torch.Tensor) -> torch.Tensor:
        """Decided digits ``[B, G, t]`` -> decoder inputs ``[B, G, t + 1, D]``: the start vector, then the digits."""
        tokens = self.token_embedding(prefix + self.code_offsets[: prefix.shape[-1]])
        return torch.cat([self.start_embedding.expand(*prefix.shape[:2], 1, -1), tokens], dim=2)

    def generative_loss(self, interaction) -> torch.Tensor:
        memory_kv, memory_mask, targets = self.training_memory(interaction)
        target = self.item_sid[targets][:, None]  # [B, 1, n]
        log_probs = self.decode_slots(self.decoder_inputs(target[..., :-1]), memory_kv, memory_mask, causal=True)
        return F.cross_entropy(log_probs.flatten(0, 2), target.flatten(), label_smoothing=self.label_smoothing)

    def decode(self, item_seq: torch.Tensor, beam_size: int):
        memory_kv, memory_mask = self.encode(item_seq)

        def next_log_probs(prefix: torch.Tensor) -> torch.Tensor:
            inputs = self.decoder_inputs(prefix)
            last = torch.arange(inputs.shape[2], device=inputs.device) == inputs.shape[2] - 1
            return self.decode_slots(inputs, memory_kv, memory_mask, causal=True, scored=last)[:, :, -1]

        return autoregressive_beam_search(next_log_probs, len(item_seq), self.n_digit, beam_size, item_seq.device,
                                          self.trie)
