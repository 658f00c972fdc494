r"""DiffGM
################################################

Reference:
    Zhao Liu et al. "DiffGRM: Diffusion-based Generative Recommendation Model." arXiv 2510.21805, 2025.

Each item is a semantic ID of ``n_digit`` parallel digits (``SIDDataset``, PSE). An encoder reads the
history, one vector per item built from its digits; a masked-diffusion decoder predicts the next item's
digits in any order, its slots attending to each other both ways and to the history (``SIDTransformer``):
a hidden slot enters the decoder as its digit's mask embedding.

- Training, On-policy Coherent Noising (OCN): a no-grad all-masked pass ranks the target's slots by the
  model's confidence; view ``t`` masks the ``t`` least confident slots and shows the others, so the views
  are nested and the hardest digit is supervised in every view (``masking_strategy: guided``).
- Inference, Confidence-guided Parallel Denoising (CPD, ``decoding.cpd_beam_search``); the beams become
  item scores for RecBole's evaluator in ``GenerativeRecommender.full_sort_predict``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from recbole_diffgm.checks import config_choice
from recbole_diffgm.errors import InputError
from recbole_diffgm.evaluation import digit_sum_scores
from recbole_diffgm.model.decoding import MASK, cpd_beam_search, guided_sid_scores
from recbole_diffgm.model.sid_transformer import DecodeRows, MemoryKV, SIDTransformer

# On a CPU, CPD runs fastest with about this many beam sequences (users x beams) at a time, its activations held in
# cache: 512 users of beam 32 at once took about twice the time per user of 32 users (results/inference-speed.md).
# The memory check (trainer.memory) counts a batch's users decoded at once: an upper bound here.
CPU_CPD_SEQUENCES = 1024


def concat_beams(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(codes, scores, first_log_probs)`` of user chunks decoded apart, as one batch: a chunk with fewer beams
    (none left for any of its users) is padded with beams of score ``-inf``."""
    width = max(codes.shape[1] for codes, _, _ in parts)
    codes = torch.cat([torch.cat([c, c[:, -1:].expand(-1, width - c.shape[1], -1)], dim=1) for c, _, _ in parts])
    scores = torch.cat([F.pad(s, (0, width - s.shape[1]), value=float("-inf")) for _, s, _ in parts])
    return codes, scores, torch.cat([first for _, _, first in parts])


class DiffGM(SIDTransformer):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.masking_strategy = config_choice(config, "masking_strategy", ("guided", "sequential", "random"))
        self.guided_select = config_choice(config, "guided_select", ("least", "most"))
        self.guided_confidence = config_choice(config, "guided_confidence", ("msp", "entropy"))
        self.guided_refresh = bool(config["guided_refresh"])
        self.sequential_paths = config["sequential_paths"]
        self.mask_prob = config["mask_prob"]
        self.ocn_views = config["ocn_views"] or self.n_digit
        if not (isinstance(self.ocn_views, int) and 1 <= self.ocn_views <= self.n_digit):
            raise InputError(f"ocn_views must be an integer from 1 to n_digit ({self.n_digit}), got {config['ocn_views']!r}")
        # View t of a path hides this many slots: evenly spaced, nested, the last one every slot.
        hidden_counts = [-(-self.n_digit * view // self.ocn_views) for view in range(1, self.ocn_views + 1)]
        self.register_buffer("hidden_counts", torch.tensor(hidden_counts), persistent=False)
        if not (isinstance(self.sequential_paths, int) and self.sequential_paths >= 1):
            raise InputError(f"sequential_paths must be a positive integer, got {self.sequential_paths!r}")
        if not 0 < self.mask_prob <= 1:
            raise InputError(f"mask_prob must be in (0, 1], got {self.mask_prob!r}")
        self.loss_reduction = config_choice(config, "loss_reduction", ("view_mean", "token_mean"))
        self.greedy_last_step = config_choice(config, "cpd_last_step", ("beam", "greedy")) == "greedy"
        slot_order = None
        if config_choice(config, "decode_order", ("confidence", "random")) == "random":
            slot_order = torch.randperm(self.n_digit, generator=torch.Generator().manual_seed(config["seed"]))
        self.register_buffer("slot_order", slot_order, persistent=False)
        self.decode_mode = config_choice(config, "decode_mode", ("cpd", "one_pass"))
        self.decode_passes = config["decode_passes"] or self.n_digit
        self.rerank_size = config["rerank_size"]
        if not (isinstance(self.decode_passes, int) and 1 <= self.decode_passes <= self.n_digit):
            raise InputError(f"decode_passes must be an integer from 1 to n_digit ({self.n_digit}), "
                             f"got {config['decode_passes']!r}")
        if not (isinstance(self.rerank_size, int) and self.rerank_size >= 0):
            raise InputError(f"rerank_size must be a non-negative integer, got {self.rerank_size!r}")
        self.catalogue_loss_weight = config["catalogue_loss_weight"]
        if not (isinstance(self.catalogue_loss_weight, (int, float)) and self.catalogue_loss_weight >= 0):
            raise InputError(f"catalogue_loss_weight must be a number >= 0, got {self.catalogue_loss_weight!r}")
        self.catalogue_loss_samples = config["catalogue_loss_samples"]
        if not (isinstance(self.catalogue_loss_samples, int) and self.catalogue_loss_samples >= 0):
            raise InputError(f"catalogue_loss_samples must be an integer >= 0, got {self.catalogue_loss_samples!r}")

        self.mask_embedding = nn.Parameter(torch.zeros(self.n_digit, config["n_embd"]))  # one per digit slot
        self.apply(self._init_weights)
        nn.init.normal_(self.mask_embedding, std=0.02)

    def denoise(self, codes: torch.Tensor, memory_kv: MemoryKV, memory_mask: torch.Tensor,
                every_slot: bool = False) -> torch.Tensor:
        """Codes ``[B, G, n]`` (``MASK`` where hidden) -> log-probabilities ``[B, G, n, K]`` of the hidden slots
        (``-inf`` at the visible ones: neither training nor decoding reads them, so they are not computed), or
        with ``every_slot`` of every slot (the refreshed OCN probe ranks the visible ones)."""
        visible = codes != MASK
        tokens = self.token_embedding(torch.where(visible, codes + self.code_offsets, 0))
        return self.decode_slots(torch.where(visible[..., None], tokens, self.mask_embedding), memory_kv, memory_mask,
                                 scored=None if every_slot else ~visible)

    # ----- training: OCN ---------------------------------------------------------------------------------

    def masking_views(self, target: torch.Tensor, memory_kv, memory_mask) -> torch.Tensor:
        """Boolean masks ``[B, V, n]`` (True = hidden and supervised) of the training views: per path, ``ocn_views``
        nested views that hide ``hidden_counts`` slots (``n`` views of 1..n slots by default)."""
        batch, n = target.shape
        if self.masking_strategy == "random":  # V views, each slot hidden independently with mask_prob
            return torch.rand(batch, self.ocn_views, n, device=target.device) < self.mask_prob
        if self.masking_strategy == "guided":
            order = self.guided_order(target, memory_kv, memory_mask)[:, None]
        else:  # sequential: random coherent orders, sequential_paths per row
            order = torch.rand(batch, self.sequential_paths, n, device=target.device).argsort(dim=-1)
        rank = order.argsort(dim=-1)  # [B, P, n]: the position of each slot in its path's order
        views = rank[:, :, None, :] < self.hidden_counts[:, None]  # [B, P, V, n]
        return views.flatten(1, 2)

    @torch.no_grad()
    def guided_order(self, target: torch.Tensor, memory_kv, memory_mask) -> torch.Tensor:
        """``[B, n]``: the order in which OCN hides the target's slots, least (``guided_select: most``: most)
        confident first, by the model's own prediction with every slot hidden (a probe in eval mode). With
        ``guided_refresh`` the probe is repeated after each hidden slot, on the target with those slots hidden, and
        the next slot is the least confident of the still visible ones: the release's refresh variant from its second
        probe on (the release's first probe shows every slot and reads outputs that its loss never trains; this one,
        as without refresh, hides every slot)."""
        was_training = self.training
        self.eval()
        batch, n = target.shape
        rows = torch.arange(batch, device=target.device)
        hidden = torch.ones_like(target, dtype=torch.bool)
        chosen = torch.zeros_like(hidden)
        order = []
        for _ in range(n - 1 if self.guided_refresh else 1):
            log_probs = self.denoise(target.masked_fill(hidden, MASK)[:, None], memory_kv, memory_mask,
                                     every_slot=True)[:, 0]
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

    def generative_loss(self, interaction) -> torch.Tensor:
        memory_kv, memory_mask, targets = self.training_memory(interaction)
        target = self.item_sid[targets]
        views = self.masking_views(target, memory_kv, memory_mask)
        views[..., 0] |= ~views.any(dim=-1)  # a view with nothing hidden supervises slot 0
        codes = target[:, None].expand_as(views).masked_fill(views, MASK)
        log_probs = self.denoise(codes, memory_kv, memory_mask)
        labels = target[:, None].expand_as(views)
        token_loss = log_probs.new_zeros(views.shape)
        token_loss[views] = F.cross_entropy(log_probs[views], labels[views], reduction="none",
                                            label_smoothing=self.label_smoothing)
        if self.loss_reduction == "token_mean":  # the released code: every hidden slot of every view alike
            loss = (token_loss * views).sum() / views.sum()
        else:  # the paper: mean over the hidden slots of each view, then over the views
            loss = ((token_loss * views).sum(-1) / views.sum(-1)).mean()
        if self.catalogue_loss_weight:
            if self.masking_strategy == "random":  # no view is sure to hide every slot
                codes = torch.full((len(target), 1, self.n_digit), MASK, device=target.device)
                first_log_probs = self.denoise(codes, memory_kv, memory_mask)[:, 0]
            else:  # the last view of the last path hides every slot
                first_log_probs = log_probs[:, -1]
            loss = loss + self.catalogue_loss_weight * self.catalogue_loss(first_log_probs, targets)
        return loss

    def catalogue_loss(self, first_log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the target's SID among every catalogue SID, each scored as one-pass decoding ranks it
        (the sum of its digits' all-masked log-probabilities): the likelihood of the generative model's own SID
        distribution restricted to the catalogue, so training optimises the ranking that one-pass scoring reads.
        With ``catalogue_loss_samples`` (fewer than the catalogue's SIDs) the softmax runs over the batch's target
        SIDs and that many SIDs drawn uniformly, shared by the batch: its cost stops growing with the catalogue.
        The catalogue is the training catalogue's SIDs (``trained_sids``: without the cold items')."""
        target_sids = self.trained_sid_index[targets]
        if not 0 < self.catalogue_loss_samples < len(self.trained_sids):
            scores = digit_sum_scores(first_log_probs.float(), self.trained_sids)  # [B, S]
            return F.cross_entropy(scores, target_sids, label_smoothing=self.label_smoothing)
        drawn = torch.randint(len(self.trained_sids), (self.catalogue_loss_samples,), device=target_sids.device)
        candidates = torch.cat([target_sids, drawn])
        scores = digit_sum_scores(first_log_probs.float(), self.trained_sids[candidates])  # [B, B + samples]
        rows = torch.arange(len(target_sids), device=target_sids.device)
        # Another copy of a row's own SID is neither its target nor a negative: left out of its softmax.
        copy = candidates[None, :] == target_sids[:, None]
        copy[rows, rows] = False
        log_probs = scores.masked_fill(copy, float("-inf")).log_softmax(dim=1)
        smoothing = log_probs.masked_fill(copy, 0).sum(dim=1) / (~copy).sum(dim=1)  # over the row's own classes
        return -((1 - self.label_smoothing) * log_probs[rows, rows] + self.label_smoothing * smoothing).mean()

    # ----- inference: CPD, scored per item ----------------------------------------------------------------

    def decode_rows(self, beam_size: int) -> DecodeRows:
        """One pass: ``rerank_size`` candidates through the decoder and the digit-sum score of every catalogue SID
        (``digit_sum_scores``' running sum, 3 floats a SID). CPD: at most ``SIDPatterns.widest_beam`` distinct
        partial SIDs, and the catalogue bookkeeping of ``decoding.SIDPatterns``: the smallest matching SID of every
        candidate (int32, ``K + 1``) and its legality mask (``K / 4``) per filled slot; per state, its matching
        SIDs and their codes while they are filtered, some ``7 M`` (``M``: the largest group of SIDs that share a
        code in one digit); the candidates merged into states (``_keep_best``, ``_merge``), up to beam x digits,
        some ten int64 tensors."""
        if self.decode_mode == "one_pass":
            beams = max(1, self.rerank_size)
            return DecodeRows(beams, beams, beside=3 * len(self.distinct_sids))
        states = self.sid_patterns.widest_beam(beam_size)
        beams = min(states, (self.n_digit * self.n_codes) ** (self.decode_passes - 1))
        filled = states if self.decode_passes < self.n_digit else beams  # later digits filled for every state
        group = self.sid_patterns.groups.shape[-1]
        merged = 20 * min(beam_size * self.n_digit, beams * self.n_digit * self.n_codes)
        return DecodeRows(beams, filled, self.n_codes + 1 + self.n_codes // 4, states * 7 * group + merged)

    def decode(self, item_seq: torch.Tensor, beam_size: int):
        """``decode_mode: cpd``: CPD with ``beam_size`` beams in ``decode_passes`` passes. ``one_pass``: every
        catalogue SID ranked by the all-masked pass alone (the top ``beam_size`` returned as beams), or, with
        ``rerank_size: R``, its top R re-scored by CPD's guided fill (R more candidates, ``n - 1`` more passes)."""
        users = max(1, CPU_CPD_SEQUENCES // beam_size)
        if self.decode_mode == "cpd" and item_seq.device.type == "cpu" and len(item_seq) > users:
            return concat_beams([self.decode(part, beam_size) for part in item_seq.split(users)])
        memory_kv, memory_mask = self.encode(item_seq)

        def denoise(codes: torch.Tensor) -> torch.Tensor:
            return self.denoise(codes, memory_kv, memory_mask)

        if self.decode_mode == "cpd":
            return cpd_beam_search(denoise, self.sid_patterns, len(item_seq), beam_size, item_seq.device,
                                   self.greedy_last_step, self.slot_order, self.decode_passes,
                                   weighted=self.dedup_strategy == "weighted")
        first_log_probs = denoise(torch.full((len(item_seq), 1, self.n_digit), MASK, device=item_seq.device))[:, 0]
        scores, top = digit_sum_scores(first_log_probs, self.distinct_sids).topk(
            min(self.rerank_size or beam_size, len(self.distinct_sids)), dim=1)
        codes = self.distinct_sids[top]  # [B, G, n]
        if self.rerank_size:
            scores, order = guided_sid_scores(denoise, codes, first_log_probs).sort(dim=1, descending=True)
            codes = codes.gather(1, order[..., None].expand_as(codes))
        return codes, scores, first_log_probs
