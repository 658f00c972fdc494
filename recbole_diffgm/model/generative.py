"""``GenerativeRecommender``: the RecBole side of every model that generates semantic IDs.

A subclass trains with ``calculate_loss`` and decodes with ``decode(item_seq, beam_size)``, which returns
beams of SIDs with their scores and per-digit log-probabilities for the SIDs the beam did not reach. This
class turns that into RecBole's contract: ``full_sort_predict`` scores every item (item-level metrics by
default), ``sid_list`` is the DiffGRM release's SID-level list (``eval_level: sid``), and ``generate`` returns
recommendation lists. ``eval_level``:

- ``item``: every item ranked, the user's history masked (RecBole's protocol), a hit is the exact item;
- ``sid``: the DiffGRM release's SID-level protocol: the beam's SIDs by score, SIDs no item has and repeats
  dropped, nothing masked, a hit is the target's SID among the first k (metrics ``sid_*``);
- ``sid_masked``: SID level with RecBole's conventions: one item per SID scored as at item level (every SID
  ranked, the history's items masked), a hit is the target's SID (metrics ``sid_masked_*``).

Beware a leak: RecBole joins the target item's features into each evaluation row; scores here read only the
history (``ITEM_SEQ``) and the model's own ``item_sid`` table, never an item feature from the batch.
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_diffgm.data.dataset import SIDDataset
from recbole_diffgm.errors import InputError
from recbole_diffgm.model.decoding import (
    PrefixTrie,
    break_ties,
    first_hit_list,
    group_ranks,
    rank_sids,
)
from recbole_diffgm.trainer import GenerativeTrainer


def config_choice(config, key: str, options: tuple[str, ...]) -> str:
    """``config[key]``, which must be one of ``options``."""
    if config[key] not in options:
        raise InputError(f"unknown {key} '{config[key]}'; choose one of {', '.join(options)}")
    return config[key]


class GenerativeRecommender(SequentialRecommender):
    """Items as semantic IDs (``SIDDataset.item_sid``), decoded with a beam, scored for RecBole."""

    input_type = InputType.POINTWISE
    dataset_class = SIDDataset
    trainer_class = GenerativeTrainer
    dense_weight: float | None = None  # a dense item head's weight in the item scores (SIDTransformer: dense_head)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        item_sid = dataset.item_sid
        self.n_slots = item_sid.shape[1]
        # Codes per digit; a disambiguation digit (sid_collision: disambiguate) may need more than codebook_size.
        self.n_codes = max(config["codebook_size"], int(item_sid.max()) + 1)
        self.beam_size = config["test_beam_size"]  # GenerativeTrainer validates with valid_beam_size
        largest_k = max(config["topk"])
        for key in ("valid_beam_size", "test_beam_size"):
            if not (isinstance(config[key], int) and config[key] >= largest_k):
                raise InputError(f"{key} {config[key]!r} is smaller than the largest topk {largest_k}: the beam must "
                                 "reach at least as many SIDs as the metrics rank")
        self.eval_level = config_choice(config, "eval_level", ("item", "sid", "sid_masked"))
        # "none" (duplicate SIDs kept in a list) exists only for generate(): a score per item cannot repeat one.
        self.dedup_strategy = config_choice(config, "dedup_strategy", ("simple", "weighted"))
        # Item ids as token ids: digit d, code c -> d * n_codes + c; the last row is the padding item.
        offsets = torch.arange(self.n_slots) * self.n_codes
        item_tokens = torch.where(item_sid >= 0, item_sid + offsets, self.n_slots * self.n_codes)
        self.register_buffer("item_sid", item_sid, persistent=False)
        self.register_buffer("item_tokens", item_tokens, persistent=False)
        self.register_buffer("code_offsets", offsets, persistent=False)
        # Every distinct catalogue SID is a leaf of this trie; decoded SIDs are matched to items through it.
        self.sid_trie = PrefixTrie(item_sid[1:], self.n_codes)
        item_leaf = torch.cat([torch.tensor([self.sid_trie.n_sids]), self.sid_trie.lookup(item_sid[1:])])
        self.register_buffer("item_leaf", item_leaf, persistent=False)  # the padding item: the spare column
        # eval_level sid_masked ranks one item per SID: the smallest item id of each SID stands for it.
        _, sid_group = item_sid.unique(dim=0, return_inverse=True)
        first_of_group = torch.full((int(sid_group.max()) + 1,), len(item_sid)).scatter_reduce(
            0, sid_group, torch.arange(len(item_sid)), reduce="amin")
        self.register_buffer("sid_representative", first_of_group[sid_group], persistent=False)
        # Items that share a SID (sid_collision: keep) are ordered by training popularity, then item id.
        popularity = torch.bincount(torch.as_tensor(dataset.inter_feat[self.ITEM_ID]), minlength=self.n_items)
        self.register_buffer("sid_group_rank", group_ranks(sid_group, popularity), persistent=False)
        # Saved with the weights (RecBole's other_parameter): a reloaded model keeps the SIDs it was trained on,
        # and items added later get theirs from the same quantizer (SIDDataset).
        self.other_parameter_name = ["sid_catalogue"]
        self.sid_catalogue = {"key": dataset.sid_key, "tokens": list(dataset.field2id_token[self.ITEM_ID][1:]),
                              "codes": item_sid[1:].numpy()}

    def decode(self, item_seq: torch.Tensor, beam_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes [B, G, n], scores [B, G], fallback_log_probs [B, n, K])``: beams sorted by score, and the
        per-digit log-probabilities that score the SIDs no beam reached (sum over the digits)."""
        raise NotImplementedError

    def dense_log_probs(self, item_seq: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]``: a dense item head's log-probabilities (with ``dense_weight`` set)."""
        raise NotImplementedError

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def generate(self, item_seq: torch.Tensor, top_k: int, dedup: str | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per user, the ``top_k`` best SIDs ``[k, n]`` that some item has, and their scores ``[k]``: the
        generative recommendation list, with ``dedup`` ``simple`` / ``weighted`` / ``none`` (default: the
        config's ``dedup_strategy``); fewer than ``top_k`` when the beam reached fewer."""
        codes, scores, _ = self.decode(item_seq, self.beam_size)
        legal = (self.sid_trie.lookup(codes) >= 0) & scores.isfinite()
        return [tuple(part[:top_k] for part in rank_sids(c, s, ok, dedup or self.dedup_strategy))
                for c, s, ok in zip(codes, scores, legal)]

    @torch.no_grad()
    def sid_list(self, item_seq: torch.Tensor, rows: torch.Tensor, target_items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``eval_level: sid``: the release's list as ``scores [B, beam + 1]`` and the column of each target
        (user ``rows``, item ``target_items``; ``first_hit_list``), for RecBole's evaluator to rank."""
        codes, scores, _ = self.decode(item_seq, self.beam_size)
        leaves = self.sid_trie.lookup(codes)
        return first_hit_list(leaves, (leaves >= 0) & scores.isfinite(), rows, self.item_leaf[target_items])

    def full_sort_predict(self, interaction) -> torch.Tensor:
        """Scores ``[B, n_items]``: items whose SID the beam reached first, by beam score; then every other
        item by the sum of its digits' ``fallback_log_probs`` (DiffGM: the all-masked step). A SID reached by several
        beams (different fill orders) scores its best beam (``dedup_strategy: simple``) or the log of their
        summed probabilities (``weighted``). Items sharing a SID are
        ordered by training popularity, then item id, exactly (``break_ties``: float64 scores). With ``eval_level`` ``sid_masked`` (or ``sid``, whose evaluation reads
        ``sid_list`` instead) only each SID's representative item is scored."""
        codes, scores, fallback_log_probs = self.decode(interaction[self.ITEM_SEQ], self.beam_size)
        batch, _, n = codes.shape
        # Beams by catalogue SID (a leaf of the trie); SIDs no item has go to the spare last column.
        beam_group = self.sid_trie.lookup(codes)
        beam_group = torch.where(beam_group >= 0, beam_group, self.sid_trie.n_sids)
        best = torch.full((batch, self.sid_trie.n_sids + 1), float("-inf"), device=codes.device)
        best.scatter_reduce_(1, beam_group, scores, reduce="amax")
        if self.dedup_strategy == "weighted":  # log of the summed probability of the beams that reached a SID
            total = torch.zeros_like(best).scatter_add_(1, beam_group, (scores - best.gather(1, beam_group)).exp())
            best = best + total.log()
        reached = best[:, self.item_leaf]  # [B, n_items], -inf where the beam did not reach the item's SID
        item_codes = self.item_sid.clamp(min=0).T  # [n, N]; digit by digit, so no [B, N, n] tensor is held
        fallback = sum(fallback_log_probs[:, digit, item_codes[digit]] for digit in range(n))  # [B, N]
        # Shift the fallback scores below the lowest beam score (a constant offset would lose float32 precision).
        hit = reached.isfinite()
        lowest_hit = torch.where(hit, reached, float("inf")).amin(dim=1, keepdim=True)
        shift = (fallback.amax(dim=1, keepdim=True) - lowest_hit + 1).clamp(min=0)  # 0 when nothing was reached
        item_scores = torch.where(hit, reached, fallback - shift)
        if self.eval_level != "item":  # one entry per SID; GenerativeTrainer maps each target to its SID's entry
            item_scores[:, self.sid_representative != torch.arange(self.n_items, device=codes.device)] = float("-inf")
        else:
            if self.dense_weight is not None:  # the dense head's item scores, fused (item level only)
                item_scores = item_scores + self.dense_weight * self.dense_log_probs(interaction[self.ITEM_SEQ])
            item_scores = break_ties(item_scores, self.sid_group_rank)
        item_scores[:, 0] = float("-inf")
        return item_scores

    def predict(self, interaction) -> torch.Tensor:
        """The score ``full_sort_predict`` gives ``interaction[ITEM_ID]``."""
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID][:, None])[:, 0]

