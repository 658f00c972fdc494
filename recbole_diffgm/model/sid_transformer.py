"""``SIDTransformer``: the encoder-decoder network that DiffGM and its autoregressive control share.

A history item is the MLP of its digits' embeddings, plus its position; a bidirectional encoder reads the
items (packed: padding costs nothing); decoder blocks over the target's digit slots attend to each other
and, with a padding mask and their own attention weights (``decoder_cross_attention``), to the history. Slot
``s`` is scored against digit ``s``'s code embeddings, the same table that embeds the digits (weight tying), and
one final LayerNorm serves encoder and decoder (the released DiffGRM code).
"""

from __future__ import annotations

from logging import getLogger
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from recbole_diffgm.checks import config_choice
from recbole_diffgm.model.generative import FLOAT, GenerativeRecommender
from recbole_diffgm.model.layers import DecoderBlock, EncoderBlock

MemoryKV = list[tuple[torch.Tensor, torch.Tensor]]  # per decoder block: the history's keys and values


class DecodeRows(NamedTuple):
    """What a decoding holds per user, in rows and floats (``SIDTransformer.decode_bytes``)."""

    beams: int  # decoder rows per digit slot in a pass
    filled: int  # states a pass leaves, each with its log-probabilities per slot
    per_filled_slot: int = 0  # floats per filled state and slot beyond its 5 K log-probabilities and candidates
    per_user: int = 0  # floats per user held while the beam steps (CPD's matching SIDs and merged candidates)
    beside: int = 0  # floats per user held beside the decoding (one-pass scores of every catalogue SID)


class SIDTransformer(GenerativeRecommender):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        d_model, n_heads, d_inner, dropout = config["n_embd"], config["n_head"], config["n_inner"], config["dropout"]
        head_dim = config["head_dim"]
        self.label_smoothing = config["label_smoothing"]
        self.token_embedding = nn.Embedding(self.n_digit * self.n_codes + 1, d_model)  # + the padding item's
        self.dropout = nn.Dropout(dropout)
        self.init_history_embedding(config)
        self.encoder = nn.ModuleList(EncoderBlock(d_model, n_heads, d_inner, dropout, head_dim)
                                     for _ in range(config["encoder_n_layer"]))
        shared = config_choice(config, "decoder_cross_attention", ("separate", "shared")) == "shared"
        self.decoder = nn.ModuleList(DecoderBlock(d_model, n_heads, d_inner, dropout, head_dim, shared)
                                     for _ in range(config["decoder_n_layer"]))
        self.ln_f = nn.LayerNorm(d_model)
        self.train_per_position = bool(config["train_per_position"])
        # Per-position training reads every prefix of a history from one pass, so its encoder is causal, at
        # inference too (as trained); a property of the network, which the training rows do not change.
        self.causal_encoder = self.train_per_position
        # Optional dense item head (LIGER, COBRA): the history's last state scores every item by its own vector.
        self.dense_head, self.dense_weight = bool(config["dense_head"]), config["dense_weight"]
        if self.dense_head:
            self.init_dense_items(config, dataset)
        self.autocast_dtype = {"none": None, "bf16": torch.bfloat16}[
            config_choice(config, "mixed_precision", ("none", "bf16"))]
        if config["compile"]:  # the decoder: the hot path of decoding; in place, so checkpoints keep their names
            for block in self.decoder:
                block.compile(dynamic=True)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if not any(".cross_attn." in name for name in state_dict) and self.decoder[0].cross_attn is not None:
            getLogger().warning("these weights predate separate cross-attention weights: the decoder blocks share "
                                "their self-attention's, as when they were trained (decoder_cross_attention: shared)")
            for block in self.decoder:
                block.cross_attn = None
        return super().load_state_dict(state_dict, strict, assign)

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None)

    def init_dense_items(self, config, dataset) -> None:
        """The dense head's item vectors (``dense_item_vectors``): one learned vector per item id."""
        self.item_embedding = nn.Embedding(self.n_items, config["n_embd"], padding_idx=0)

    def dense_item_vectors(self) -> torch.Tensor:
        """``[n_items, D]``: the vectors the dense head scores every item by."""
        return self.item_embedding.weight

    def init_history_embedding(self, config) -> None:
        d_model = config["n_embd"]
        self.item_mlp = nn.Sequential(nn.Linear(self.n_digit * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.position_embedding = nn.Embedding(self.max_seq_length, d_model)

    def embed_history(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """History ``[B, L]`` (right-padded with 0) -> packed item vectors ``[T, D]`` and their mask ``[B, L]``."""
        mask = item_seq > 0
        items = self.item_mlp(self.token_embedding(self.item_tokens[item_seq[mask]]).flatten(1))
        positions = torch.arange(item_seq.shape[1], device=item_seq.device).expand_as(item_seq)[mask]
        return items + self.position_embedding(positions), mask

    def encode(self, item_seq: torch.Tensor) -> tuple[MemoryKV, torch.Tensor]:
        """History ``[B, L]`` -> each decoder block's memory keys/values, computed once per user, and the key mask."""
        with self.autocast(item_seq.device):
            memory, mask = self._memory(item_seq)
            return [block.memory_attention.memory_kv(memory, mask) for block in self.decoder], mask

    def training_memory(self, interaction) -> tuple[MemoryKV, torch.Tensor, torch.Tensor]:
        """The training rows' memory, key mask and target items: one row per interaction, or with
        ``train_per_position`` one per position of each history, every prefix read from one (causal) encoder pass."""
        item_seq = interaction[self.ITEM_SEQ]
        memory_kv, memory_mask = self.encode(item_seq)
        if not self.train_per_position:
            return memory_kv, memory_mask, interaction[self.POS_ITEM_ID]
        users, steps, targets = history_positions(item_seq, interaction[self.ITEM_SEQ_LEN], interaction[self.POS_ITEM_ID])
        keys = memory_mask.shape[1]
        key_item = torch.arange(keys, device=item_seq.device) // (keys // item_seq.shape[1])  # TIGER: n keys per item
        memory_mask = memory_mask[users] & (key_item <= steps[:, None])
        return [(k[users], v[users]) for k, v in memory_kv], memory_mask, targets

    def _memory(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """History ``[B, L]`` -> the encoder's packed output ``[T, D]`` and its mask."""
        hidden, mask = self.embed_history(item_seq)
        hidden = self.dropout(hidden)
        for block in self.encoder:
            hidden = block(hidden, mask, causal=self.causal_encoder)
        return self.ln_f(hidden), mask

    def dense_log_probs(self, item_seq: torch.Tensor) -> torch.Tensor:
        """The dense head: ``[B, n_items]`` log-probabilities of the next item, from the history's last state (an
        encoder pass of its own) against every item's vector; the padding item is ``-inf``."""
        rows = torch.arange(len(item_seq), device=item_seq.device)
        return self._dense_log_probs_at(item_seq, rows, (item_seq > 0).sum(dim=1) - 1)

    def _dense_log_probs_at(self, item_seq: torch.Tensor, users: torch.Tensor, steps: torch.Tensor,
                            trained_only: bool = False) -> torch.Tensor:
        """``[R, n_items]``: the dense head at step ``steps[r]`` of history ``users[r]``, read from the encoder's
        state of that item (its last key: TIGER's last digit), from one encoder pass over the histories; with
        ``trained_only`` (the loss), over the training catalogue's items alone (``untrained_items`` ``-inf``)."""
        with self.autocast(item_seq.device):
            memory, mask = self._memory(item_seq)
            keys_per_item = mask.shape[1] // item_seq.shape[1]
            row_size = mask.sum(dim=1)
            row_start = row_size.cumsum(dim=0) - row_size  # packed row by row
            states = memory[row_start[users] + (steps + 1) * keys_per_item - 1]
            logits = (states @ self.dense_item_vectors().T).float()
        logits[:, 0] = float("-inf")
        if trained_only and self.untrained_items is not None:
            logits[:, self.untrained_items] = float("-inf")
        return logits.log_softmax(dim=-1)

    def dense_loss(self, interaction) -> torch.Tensor:
        """The dense head's cross-entropy over the training catalogue's items, on the targets the generative loss
        reads: the history's last state against the next item, or with ``train_per_position`` every position's state against its
        target (``history_positions``; the causal encoder's state at a step has seen the items up to it only).
        An encoder pass of its own: ``generative_loss(interaction)``, the subclasses' contract, encodes for itself."""
        item_seq = interaction[self.ITEM_SEQ]
        if not self.train_per_position:
            users, steps = torch.arange(len(item_seq), device=item_seq.device), (item_seq > 0).sum(dim=1) - 1
            targets = interaction[self.POS_ITEM_ID]
        else:
            users, steps, targets = history_positions(item_seq, interaction[self.ITEM_SEQ_LEN],
                                                      interaction[self.POS_ITEM_ID])
        return F.nll_loss(self._dense_log_probs_at(item_seq, users, steps, trained_only=True), targets)

    def calculate_loss(self, interaction) -> torch.Tensor:
        """The generative loss (``generative_loss``), plus with the dense head its loss (``dense_loss``)."""
        loss = self.generative_loss(interaction)
        if self.dense_head:
            loss = loss + self.dense_loss(interaction)
        return loss

    def generative_loss(self, interaction) -> torch.Tensor:
        raise NotImplementedError

    def decode_rows(self, beam_size: int) -> DecodeRows:
        """A left-to-right beam of ``beam_size``: at most every prefix of ``n - 1`` digits, nothing else held."""
        beams = min(beam_size, (self.n_digit * self.n_codes) ** (self.n_digit - 1))
        return DecodeRows(beams, beams)

    def decode_bytes(self, users: int, beam_size: int) -> int:
        """Peak bytes of ``decode`` for ``users`` histories at ``beam_size``.

        Per decoder row (user x beam x digit slot), in floats, while a block runs: the denoiser's two input tensors
        (``DiffGM.denoise``: the code embeddings and the masked mix of them) and the previous step's
        log-probabilities and candidate scores (K each); inside a block the largest of its three phases
        (``DecoderBlock.forward``: the block's input and residuals are held throughout): self-attention
        ``3D + 5A`` (LayerNorm, fused QKV, attention output, its head-merged copy, projection), cross-attention
        ``4D + 3A``, FFN ``4D + 2F`` (the residual ``cross`` is still held; GELU's input and output). Torch's CPU
        attention kernel is blocked (flash), so no ``[rows, keys]`` score matrix is ever held. After the pass: the
        new log-probabilities, their masked copy, the candidates and the old ones, ``4K`` (``5K`` when a pass fills
        several digits), and what the decoding keeps besides (``decode_rows``). The history's memory keys and values
        (``Attention.memory_kv``, every decoder block) are held throughout the decoding; the encoder's working set
        (``EncoderBlock``: padded attention, FFN; every history counted full) comes before them, so only the larger
        counts. ``tests/test_memory.py`` holds the count to torch's allocation count.
        """
        d_model, block = self.token_embedding.embedding_dim, self.decoder[0]
        d_attn, d_inner = block.attn.d_attn, block.ffn[0].out_features
        keys = self.position_embedding.num_embeddings  # history tokens: items (DiffGM, ARGM), digit tokens (TIGER)
        rows = self.decode_rows(beam_size)
        in_block = max(3 * d_model + 5 * d_attn, 4 * d_model + 3 * d_attn, 4 * d_model + 2 * d_inner)
        in_pass = 2 * d_model + 2 * self.n_codes + in_block
        after_pass = 5 * self.n_codes + rows.per_filled_slot
        decoder = users * (max(rows.beams * in_pass, rows.filled * after_pass) * self.n_digit + rows.per_user)
        memory_kv = 2 * len(self.decoder) * users * keys * d_attn
        encoder = users * keys * max((self.n_digit + 2) * d_model, 3 * d_model + 6 * d_attn, 3 * d_model + 2 * d_inner)
        return FLOAT * (max(encoder, memory_kv + decoder) + users * rows.beside)

    def decode_slots(self, hidden: torch.Tensor, memory_kv: MemoryKV, memory_mask: torch.Tensor,
                     causal: bool = False, scored: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder inputs ``[B, G, s, D]`` for slots ``0..s-1`` -> log-probabilities ``[B, G, s, K]`` of each
        slot's digit. With ``scored`` (bool, broadcastable to ``[B, G, s]``) only those slots get an output layer
        and a softmax; the others are ``-inf``, which decoding and the training loss never read."""
        with self.autocast(hidden.device):
            return self._output_log_probs(self._decoder_hidden(hidden, memory_kv, memory_mask, causal), scored)

    def _decoder_hidden(self, hidden: torch.Tensor, memory_kv: MemoryKV, memory_mask: torch.Tensor,
                        causal: bool) -> torch.Tensor:
        hidden = self.dropout(hidden)
        for block, kv in zip(self.decoder, memory_kv):
            hidden = block(hidden, kv, memory_mask, causal)
        return self.ln_f(hidden)

    def _output_log_probs(self, hidden: torch.Tensor, scored: torch.Tensor | None) -> torch.Tensor:
        slots = hidden.shape[-2]
        code_table = self.token_embedding.weight[: slots * self.n_codes].view(slots, self.n_codes, -1)
        if scored is None:
            return torch.einsum("bgsd,skd->bgsk", hidden, code_table).float().log_softmax(dim=-1)
        scored = scored.expand(hidden.shape[:-1])
        log_probs = hidden.new_full((*hidden.shape[:-1], self.n_codes), float("-inf"), dtype=torch.float32)
        for slot in range(slots):  # a loop over the n digits; every user and beam of a slot in one matmul
            rows = scored[..., slot]
            log_probs[..., slot, :][rows] = (hidden[..., slot, :][rows] @ code_table[slot].T).float().log_softmax(dim=-1)
        return log_probs


def history_positions(item_seq: torch.Tensor, length: torch.Tensor, next_item: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A history ``[B, L]`` of ``length`` items, followed by ``next_item``, holds a target at every position:
    ``(users, steps, targets)`` ``[R]``, where the user's items up to ``steps`` predict ``targets``."""
    rows = torch.arange(len(item_seq), device=item_seq.device)
    sequence = torch.cat([item_seq, item_seq.new_zeros(len(item_seq), 1)], dim=1)
    sequence[rows, length] = next_item
    users, steps = (torch.arange(item_seq.shape[1], device=item_seq.device) < length[:, None]).nonzero(as_tuple=True)
    return users, steps, sequence[users, steps + 1]
