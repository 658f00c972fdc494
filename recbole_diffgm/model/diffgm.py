r"""DiffGM
################################################

Reference:
    Zhao Liu et al. "DiffGRM: Diffusion-based Generative Recommendation Model." arXiv 2510.21805, 2025.

Each item is a semantic ID of ``n_digit`` parallel digits (``SIDDataset``, PSE). An encoder reads the
history, one vector per item built from its digits; a masked-diffusion decoder predicts the next item's
digits in any order, its slots attending to each other both ways and to the history.

- Training, On-policy Coherent Noising (OCN): a no-grad all-masked pass ranks the target's slots by the
  model's confidence; view ``t`` masks the ``t`` least confident slots and shows the others, so the views
  are nested and the hardest digit is supervised in every view (``masking_strategy: guided``).
- Inference, Confidence-guided Parallel Denoising (CPD, ``decoding.cpd_beam_search``), scored per item
  so that RecBole's evaluator ranks every item (``full_sort_predict``).
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn
from torch.nn import functional as F

from recbole_diffgm.data.dataset import SIDDataset
from recbole_diffgm.errors import InputError
from recbole_diffgm.model.decoding import MASK, cpd_beam_search, rank_sids
from recbole_diffgm.model.layers import DecoderBlock, EncoderBlock
from recbole_diffgm.trainer import GenerativeTrainer


def _choice(config, key: str, options: tuple[str, ...]) -> str:
    if config[key] not in options:
        raise InputError(f"unknown {key} '{config[key]}'; choose one of {', '.join(options)}")
    return config[key]


class DiffGM(SequentialRecommender):
    input_type = InputType.POINTWISE
    dataset_class = SIDDataset
    trainer_class = GenerativeTrainer

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        item_sid = dataset.item_sid
        self.n_slots = item_sid.shape[1]
        self.n_codes = config["codebook_size"]
        if item_sid[1:].max() >= self.n_codes:
            raise InputError(f"a semantic-ID digit reaches {int(item_sid[1:].max())}, beyond codebook_size "
                             f"{self.n_codes} (a disambiguation digit for a larger collision group?)")
        self.masking_strategy = _choice(config, "masking_strategy", ("guided", "sequential", "random"))
        self.guided_select = _choice(config, "guided_select", ("least", "most"))
        self.guided_confidence = _choice(config, "guided_confidence", ("msp", "entropy"))
        self.guided_refresh = bool(config["guided_refresh"])
        self.sequential_paths = config["sequential_paths"]
        self.mask_prob = config["mask_prob"]
        if not (isinstance(self.sequential_paths, int) and self.sequential_paths >= 1):
            raise InputError(f"sequential_paths must be a positive integer, got {self.sequential_paths!r}")
        if not 0 < self.mask_prob <= 1:
            raise InputError(f"mask_prob must be in (0, 1], got {self.mask_prob!r}")
        self.loss_reduction = _choice(config, "loss_reduction", ("view_mean", "token_mean"))
        self.label_smoothing = config["label_smoothing"]
        self.beam_size = config["test_beam_size"]  # GenerativeTrainer validates with valid_beam_size
        self.greedy_last_step = _choice(config, "cpd_last_step", ("beam", "greedy")) == "greedy"
        self.eval_level = _choice(config, "eval_level", ("item", "sid"))
        # "none" (duplicate SIDs kept in a list) exists only for generate(): a score per item cannot repeat one.
        self.dedup_strategy = _choice(config, "dedup_strategy", ("simple", "weighted"))
        slot_order = None
        if _choice(config, "decode_order", ("confidence", "random")) == "random":
            slot_order = torch.randperm(self.n_slots, generator=torch.Generator().manual_seed(config["seed"]))
        self.register_buffer("slot_order", slot_order, persistent=False)
        # Item ids as token ids: digit d, code c -> d * n_codes + c; the last row is the padding item.
        offsets = torch.arange(self.n_slots) * self.n_codes
        item_tokens = torch.where(item_sid >= 0, item_sid + offsets, self.n_slots * self.n_codes)
        self.register_buffer("item_sid", item_sid, persistent=False)
        self.register_buffer("item_tokens", item_tokens, persistent=False)
        self.register_buffer("code_offsets", offsets, persistent=False)
        # SID-level evaluation ranks one item per SID: the smallest item id of each SID stands for it.
        _, sid_group = item_sid.unique(dim=0, return_inverse=True)
        first_of_group = torch.full((int(sid_group.max()) + 1,), len(item_sid)).scatter_reduce(
            0, sid_group, torch.arange(len(item_sid)), reduce="amin")
        self.register_buffer("sid_representative", first_of_group[sid_group], persistent=False)
        # Training popularity breaks ties between items that share a SID (sid_collision: keep).
        popularity = torch.bincount(torch.as_tensor(dataset.inter_feat[self.ITEM_ID]), minlength=self.n_items)
        self.register_buffer("tie_break", popularity.float() / (popularity.max() + 1) * 1e-4, persistent=False)

        d_model, n_heads, d_inner, dropout = (config["n_embd"], config["n_head"], config["n_inner"], config["dropout"])
        self.token_embedding = nn.Embedding(self.n_slots * self.n_codes + 1, d_model)
        self.item_mlp = nn.Sequential(nn.Linear(self.n_slots * d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.position_embedding = nn.Embedding(self.max_seq_length, d_model)
        self.mask_embedding = nn.Parameter(torch.zeros(self.n_slots, d_model))
        self.dropout = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderBlock(d_model, n_heads, d_inner, dropout) for _ in range(config["encoder_n_layer"]))
        self.decoder = nn.ModuleList(DecoderBlock(d_model, n_heads, d_inner, dropout) for _ in range(config["decoder_n_layer"]))
        self.ln_f = nn.LayerNorm(d_model)
        self.apply(self._init_weights)
        nn.init.normal_(self.mask_embedding, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ----- the network -----------------------------------------------------------------------------------

    def encode(self, item_seq: torch.Tensor) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """History ``[B, L]`` (right-padded with 0) -> per decoder block memory keys/values, and the key mask.

        The encoder runs on the real items only (packed), so its cost follows the histories' lengths."""
        mask = item_seq > 0
        items = self.item_mlp(self.token_embedding(self.item_tokens[item_seq[mask]]).flatten(1))  # [T, D]
        positions = torch.arange(item_seq.shape[1], device=item_seq.device).expand_as(item_seq)[mask]
        hidden = self.dropout(items + self.position_embedding(positions))
        for block in self.encoder:
            hidden = block(hidden, mask)
        memory = self.ln_f(hidden)
        return [block.attn.memory_kv(memory, mask) for block in self.decoder], mask

    def denoise(self, codes: torch.Tensor, memory_kv, memory_mask: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, G, n]`` (``MASK`` where hidden) -> log-probabilities ``[B, G, n, K]`` for every slot."""
        visible = codes != MASK
        tokens = self.token_embedding(torch.where(visible, codes + self.code_offsets, 0))
        hidden = self.dropout(torch.where(visible[..., None], tokens, self.mask_embedding))
        for block, kv in zip(self.decoder, memory_kv):
            hidden = block(hidden, kv, memory_mask)
        hidden = self.ln_f(hidden)
        code_table = self.token_embedding.weight[: self.n_slots * self.n_codes].view(self.n_slots, self.n_codes, -1)
        logits = torch.einsum("bgsd,skd->bgsk", hidden, code_table)  # weight-tied output per digit
        return logits.log_softmax(dim=-1)

    # ----- training: OCN ---------------------------------------------------------------------------------

    def masking_views(self, target: torch.Tensor, memory_kv, memory_mask) -> torch.Tensor:
        """Boolean masks ``[B, V, n]`` (True = hidden and supervised) of the training views."""
        batch, n = target.shape
        if self.masking_strategy == "random":  # n views, each slot hidden independently with mask_prob
            return torch.rand(batch, n, n, device=target.device) < self.mask_prob
        if self.masking_strategy == "guided":
            order = self.guided_order(target, memory_kv, memory_mask)[:, None]
        else:  # sequential: random coherent orders, sequential_paths per row
            order = torch.rand(batch, self.sequential_paths, n, device=target.device).argsort(dim=-1)
        rank = order.argsort(dim=-1)  # [B, P, n]: the position of each slot in its path's order
        views = rank[:, :, None, :] <= torch.arange(n, device=target.device)[:, None]  # view t hides t + 1 slots
        return views.flatten(1, 2)

    @torch.no_grad()
    def guided_order(self, target: torch.Tensor, memory_kv, memory_mask) -> torch.Tensor:
        """``[B, n]``: the order in which OCN hides the target's slots, least (``guided_select: most``: most)
        confident first, by the model's own prediction with every slot hidden (a probe in eval mode). With
        ``guided_refresh`` the probe is repeated after each hidden slot, on the target with those slots hidden."""
        was_training = self.training
        self.eval()
        batch, n = target.shape
        rows = torch.arange(batch, device=target.device)
        hidden = torch.ones_like(target, dtype=torch.bool)
        chosen = torch.zeros_like(hidden)
        order = []
        for _ in range(n - 1 if self.guided_refresh else 1):
            log_probs = self.denoise(target.masked_fill(hidden, MASK)[:, None], memory_kv, memory_mask)[:, 0]
            if self.guided_confidence == "msp":
                confidence = log_probs.amax(dim=-1)
            else:  # entropy: confidence = -entropy
                confidence = (log_probs.exp() * log_probs).sum(dim=-1)
            if self.guided_select == "most":
                confidence = -confidence
            if not self.guided_refresh:
                order = confidence.argsort(dim=1)
                break
            pick = confidence.masked_fill(chosen, float("inf")).argmin(dim=1)
            chosen[rows, pick] = True
            hidden = chosen.clone()
            order.append(pick)
        else:
            order = torch.stack([*order, (~chosen).int().argmax(dim=1)], dim=1)
        self.train(was_training)
        return order

    def calculate_loss(self, interaction) -> torch.Tensor:
        item_seq = interaction[self.ITEM_SEQ]
        target = self.item_sid[interaction[self.POS_ITEM_ID]]
        memory_kv, memory_mask = self.encode(item_seq)
        views = self.masking_views(target, memory_kv, memory_mask)
        views[..., 0] |= ~views.any(dim=-1)  # a view with nothing hidden supervises slot 0
        codes = target[:, None].expand_as(views).masked_fill(views, MASK)
        log_probs = self.denoise(codes, memory_kv, memory_mask)
        labels = target[:, None].expand_as(views)
        token_loss = F.cross_entropy(log_probs.flatten(0, 2), labels.flatten(), reduction="none",
                                     label_smoothing=self.label_smoothing).view_as(views)
        if self.loss_reduction == "token_mean":  # the released code: every hidden slot of every view alike
            return (token_loss * views).sum() / views.sum()
        # The paper: mean over the hidden slots of each view, then over the views.
        return ((token_loss * views).sum(-1) / views.sum(-1)).mean()

    # ----- inference: CPD, scored per item ----------------------------------------------------------------

    def decode(self, item_seq: torch.Tensor, beam_size: int):
        memory_kv, memory_mask = self.encode(item_seq)
        return cpd_beam_search(lambda codes: self.denoise(codes, memory_kv, memory_mask), len(item_seq),
                               self.n_slots, beam_size, item_seq.device, self.greedy_last_step, self.slot_order)

    @torch.no_grad()
    def generate(self, item_seq: torch.Tensor, top_k: int, dedup: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per user, the ``top_k`` best SIDs ``[k, n]`` that some item has, and their scores ``[k]``: the
        generative recommendation list, with ``dedup`` ``simple`` / ``weighted`` / ``none`` (default: the
        config's ``dedup_strategy``); fewer than ``top_k`` when the beam reached fewer."""
        codes, scores, _ = self.decode(item_seq, self.beam_size)
        catalogue = self.item_sid[1:]
        _, group = torch.cat([catalogue, codes.flatten(0, 1)]).unique(dim=0, return_inverse=True)
        legal = torch.isin(group[len(catalogue):], group[: len(catalogue)]).view(codes.shape[:2])
        return [tuple(part[:top_k] for part in rank_sids(c, s, ok, dedup or self.dedup_strategy))
                for c, s, ok in zip(codes, scores, legal)]

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores ``[B, n_items]``: items whose SID the beam reached first, by beam score; then every other
        item by the sum of its digits' log-probabilities in the all-masked step. A SID reached by several
        beams (different fill orders) scores its best beam (``dedup_strategy: simple``) or the log of their
        summed probabilities (``weighted``). Items sharing a SID are
        ordered by training popularity. With ``eval_level: sid`` only each SID's representative item is
        scored (the paper's SID-level protocol)."""
        codes, scores, first_log_probs = self.decode(interaction[self.ITEM_SEQ], self.beam_size)
        batch, beams, n = codes.shape
        # One group id per distinct SID among the catalogue and the decoded beams.
        _, group = torch.cat([self.item_sid, codes.flatten(0, 1)]).unique(dim=0, return_inverse=True)
        item_group, beam_group = group[: self.n_items], group[self.n_items:].view(batch, beams)
        best = torch.full((batch, int(group.max()) + 1), float("-inf"), device=codes.device)
        best.scatter_reduce_(1, beam_group, scores, reduce="amax")
        if self.dedup_strategy == "weighted":  # log of the summed probability of the beams that reached a SID
            total = torch.zeros_like(best).scatter_add_(1, beam_group, (scores - best.gather(1, beam_group)).exp())
            best = best + total.log()
        reached = best[:, item_group]  # [B, n_items], -inf where the beam did not reach the item's SID
        digits = first_log_probs[:, torch.arange(n, device=codes.device), self.item_sid.clamp(min=0)]  # [B, N, n]
        fallback = digits.sum(-1)
        # Shift the fallback scores below the lowest beam score (a constant offset would lose float32 precision).
        hit = reached.isfinite()
        lowest_hit = torch.where(hit, reached, float("inf")).amin(dim=1, keepdim=True)
        shift = (fallback.amax(dim=1, keepdim=True) - lowest_hit + 1).clamp(min=0)  # 0 when nothing was reached
        item_scores = torch.where(hit, reached, fallback - shift)
        if self.eval_level == "sid":  # one entry per SID; GenerativeTrainer maps each target to its SID's entry
            item_scores[:, self.sid_representative != torch.arange(self.n_items, device=codes.device)] = float("-inf")
        else:
            item_scores = item_scores + self.tie_break
        item_scores[:, 0] = float("-inf")
        return item_scores

    def predict(self, interaction) -> torch.Tensor:
        """The score ``full_sort_predict`` gives ``interaction[ITEM_ID]``."""
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID][:, None])[:, 0]

