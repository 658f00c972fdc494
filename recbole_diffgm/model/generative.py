"""``GenerativeRecommender``: the RecBole side of every model that generates semantic IDs.

A subclass trains with ``calculate_loss`` and decodes with ``decode(item_seq, beam_size)``, which returns
beams of SIDs with their scores and per-digit log-probabilities for the SIDs the beam did not reach. This
class turns that into RecBole's contract: ``full_sort_predict`` scores every item (item-level metrics by
default), ``sid_list`` is the DiffGRM release's SID-level list (``eval_level: sid``), and ``generate`` returns
recommendation lists; what each ``eval_level`` counts, and the scoring it uses, is in ``recbole_diffgm.evaluation``.

Beware a leak: RecBole joins the target item's features into each evaluation row; scores here read only the
history (``ITEM_SEQ``) and the model's own ``item_sid`` table, never an item feature from the batch.
"""

from __future__ import annotations

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_diffgm import evaluation
from recbole_diffgm.checks import config_choice
from recbole_diffgm.data.dataset import SIDDataset
from recbole_diffgm.errors import InputError

FLOAT = 4  # bytes of a float32
# Bytes per (user, item) cell of the item-level stage of ``full_sort_predict`` at its peak (merged SID scores, the
# digit-sum fallback and its temporaries, float64 tie-breaking: ``evaluation.item_scores``, ``break_ties``), about
# 53, and RecBole's int32 position matrix (``Collector``).
CELL_BYTES = 53 + 4
from recbole_diffgm.model.decoding import PrefixTrie, SIDPatterns


class GenerativeRecommender(SequentialRecommender):
    """Items as semantic IDs (``SIDDataset.item_sid``), decoded with a beam, scored for RecBole."""

    input_type = InputType.POINTWISE
    dataset_class = SIDDataset
    generates_sids = True  # the lookup gives these models GenerativeTrainer; the memory check asks them their count
    dense_head = False  # a dense item head whose log-probabilities, times dense_weight, add to the item scores

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        item_sid = dataset.item_sid
        self.n_digit = item_sid.shape[1]  # config n_digit, plus one with sid_collision: disambiguate
        # Codes per digit; a disambiguation digit (sid_collision: disambiguate) may need more than codebook_size.
        self.n_codes = max(config["codebook_size"], int(item_sid.max()) + 1)
        self.beam_size = config["test_beam_size"]  # the default of every evaluation; GenerativeTrainer validates
                                                  # with valid_beam_size
        largest_k = max(config["topk"])
        for key in ("valid_beam_size", "test_beam_size"):
            if not (isinstance(config[key], int) and config[key] >= largest_k):
                raise InputError(f"{key} {config[key]!r} is smaller than the largest topk {largest_k}: the beam must "
                                 "reach at least as many SIDs as the metrics rank")
        self.eval_level = config_choice(config, "eval_level", tuple(evaluation.METRIC_PREFIXES))
        # "none" (duplicate SIDs kept in a list) exists only for generate(): a score per item cannot repeat one.
        self.dedup_strategy = config_choice(config, "dedup_strategy", evaluation.DEDUP_STRATEGIES)
        # Item ids as token ids: digit d, code c -> d * n_codes + c; the last row is the padding item.
        offsets = torch.arange(self.n_digit) * self.n_codes
        item_tokens = torch.where(item_sid >= 0, item_sid + offsets, self.n_digit * self.n_codes)
        self.register_buffer("item_sid", item_sid, persistent=False)
        self.register_buffer("item_tokens", item_tokens, persistent=False)
        self.register_buffer("code_offsets", offsets, persistent=False)
        # Every distinct catalogue SID is a leaf of this trie (in sorted order: the rows of distinct_sids);
        # decoded SIDs are matched to items through it.
        self.sid_trie = PrefixTrie(item_sid[1:], self.n_codes)
        self.register_buffer("distinct_sids", item_sid[1:].unique(dim=0), persistent=False)
        # Which partial SIDs some catalogue SID completes, in any fill order (CPD's beam stays on them).
        self.sid_patterns = SIDPatterns(self.distinct_sids, self.n_codes)
        # Each item's SID as its row of distinct_sids (the trie's leaf id, the column of the per-SID scores); the
        # padding item gets the spare column n_sids.
        item_sid_index = torch.cat([torch.tensor([self.sid_trie.n_sids]), self.sid_trie.lookup(item_sid[1:])])
        self.register_buffer("item_sid_index", item_sid_index, persistent=False)
        self.register_buffer("sid_representative", evaluation.sid_representatives(item_sid_index), persistent=False)
        # What a loss over the catalogue ranks (DiffGM's catalogue loss, a dense head): the items the model trains
        # with (SIDDataset.catalogue_item_ids) and their SIDs. Cold items (cold_items) are left out, as a model
        # trained before they came never saw them, as negatives either; without them, every item and SID.
        trained = dataset.catalogue_item_ids[dataset.catalogue_item_ids > 0]
        untrained = torch.ones(self.n_items, dtype=torch.bool)
        untrained[trained] = False
        untrained[0] = False  # the padding item: scored -inf by every loss anyway
        self.register_buffer("untrained_items", untrained if untrained.any() else None, persistent=False)
        trained_sids = item_sid_index[trained].unique()  # sorted: every row of distinct_sids where none is cold
        column = torch.full((self.sid_trie.n_sids + 1,), len(trained_sids))  # no row: len(trained_sids)
        column[trained_sids] = torch.arange(len(trained_sids))
        self.register_buffer("trained_sids", self.distinct_sids[trained_sids], persistent=False)
        self.register_buffer("trained_sid_index", column[item_sid_index], persistent=False)  # an item's row of them
        # Items that share a SID (sid_collision: keep) are ordered by training popularity (every item of the
        # training split, with train_per_position too: SIDDataset.build), then item id.
        self.register_buffer("sid_group_rank", evaluation.group_ranks(item_sid_index, dataset.item_popularity),
                             persistent=False)
        # Saved with the weights (RecBole's other_parameter): a reloaded model keeps the SIDs it was trained on,
        # and items added later get theirs from the same quantizer, fitted on the texts of fitted_tokens (SIDDataset).
        self.other_parameter_name = ["sid_catalogue"]
        self.sid_catalogue = {"key": dataset.sid_key, "tokens": list(dataset.field2id_token[self.ITEM_ID][1:]),
                              "codes": item_sid[1:].numpy(), "fitted_tokens": list(dataset.sid_fitted_tokens)}

    def decode(self, item_seq: torch.Tensor, beam_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(codes [B, G, n], scores [B, G], first_log_probs [B, n, K])``: beams sorted by score, and the first
        decoding step's per-digit log-probabilities, which score the SIDs no beam reached (``digit_sum_scores``)."""
        raise NotImplementedError

    def dense_log_probs(self, item_seq: torch.Tensor) -> torch.Tensor:
        """``[B, n_items]``: the dense item head's log-probabilities (``dense_head``)."""
        raise NotImplementedError

    def decode_bytes(self, users: int, beam_size: int) -> int:
        """Peak bytes of ``decode`` for ``users`` histories at ``beam_size``."""
        raise NotImplementedError

    def eval_batch_bytes(self, users: int, beam_size: int | None = None) -> int:
        """Peak extra bytes of one full-sort evaluation batch of ``users`` at ``beam_size`` (default ``beam_size``):
        the decoding (``decode_bytes``), or after it the scores RecBole's evaluator ranks, whichever is larger
        (``trainer.memory`` checks the estimate before a run trains or evaluates)."""
        beam_size = beam_size or self.beam_size
        if self.eval_level == "sid":  # the release's list (evaluation.first_hit_list): beam x beam comparisons
            scores = users * beam_size * beam_size * FLOAT
        else:
            scores = users * self.n_items * (CELL_BYTES + (3 * FLOAT if self.dense_head else 0))
        return max(self.decode_bytes(users, beam_size), scores)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def generate(self, item_seq: torch.Tensor, top_k: int, dedup: str | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per user, the ``top_k`` best SIDs ``[k, n]`` that some item has, and their scores ``[k]``: the
        generative recommendation list, with ``dedup`` ``simple`` / ``weighted`` / ``none`` (default: the
        config's ``dedup_strategy``; ``none`` keeps every beam, so a SID may repeat, as in the released code's
        lists); fewer than ``top_k`` when the beam reached fewer."""
        codes, scores, _ = self.decode(item_seq, self.beam_size)
        leaves = self.sid_trie.lookup(codes)
        dedup = dedup or self.dedup_strategy
        if dedup == "none":
            legal = (leaves >= 0) & scores.isfinite()
            return [(c[ok][:top_k], s[ok][:top_k]) for c, s, ok in zip(codes, scores, legal)]
        sid_scores = evaluation.merge_beams(leaves, scores, self.sid_trie.n_sids, dedup)
        return evaluation.ranked_sids(sid_scores, self.distinct_sids, top_k)

    @torch.no_grad()
    def sid_list(self, item_seq: torch.Tensor, rows: torch.Tensor, target_items: torch.Tensor,
                 beam_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``eval_level: sid``: the release's list as ``scores [B, beam + 1]`` and the column of each target
        (user ``rows``, item ``target_items``; ``evaluation.first_hit_list``), for RecBole's evaluator to rank."""
        codes, scores, _ = self.decode(item_seq, beam_size or self.beam_size)
        leaves = self.sid_trie.lookup(codes)
        return evaluation.first_hit_list(leaves, (leaves >= 0) & scores.isfinite(), rows, self.item_sid_index[target_items])

    def full_sort_predict(self, interaction, beam_size: int | None = None) -> torch.Tensor:
        """Scores ``[B, n_items]`` (``evaluation.item_scores``), decoded at ``beam_size`` (default ``beam_size``, the
        test beam): items whose SID the beam reached first, by the SID's
        merged beam score (``dedup_strategy``); then every other item by the sum of its digits'
        ``first_log_probs`` (DiffGM: the all-masked step). Items sharing a SID are ordered by training popularity,
        then item id, exactly (``evaluation.break_ties``: float64 scores). With ``eval_level`` ``sid_full_sort`` (or
        ``sid``, whose evaluation reads ``sid_list`` instead) only each SID's representative item is scored."""
        codes, scores, first_log_probs = self.decode(interaction[self.ITEM_SEQ], beam_size or self.beam_size)
        sid_scores = evaluation.merge_beams(self.sid_trie.lookup(codes), scores, self.sid_trie.n_sids,
                                            self.dedup_strategy)
        fallback = evaluation.digit_sum_scores(first_log_probs, self.item_sid.clamp(min=0))  # [B, N]
        item_scores = evaluation.item_scores(sid_scores, self.item_sid_index, fallback)
        if self.eval_level != "item":  # one entry per SID; GenerativeTrainer maps each target to its SID's entry
            item_scores[:, self.sid_representative != torch.arange(self.n_items, device=codes.device)] = float("-inf")
        else:
            if self.dense_head:  # the dense head's item scores, fused (item level only)
                item_scores = item_scores + self.dense_weight * self.dense_log_probs(interaction[self.ITEM_SEQ])
            item_scores = evaluation.break_ties(item_scores, self.sid_group_rank)
        item_scores[:, 0] = float("-inf")
        return item_scores

    def predict(self, interaction) -> torch.Tensor:
        """The score ``full_sort_predict`` gives ``interaction[ITEM_ID]``."""
        scores = self.full_sort_predict(interaction)
        return scores.gather(1, interaction[self.ITEM_ID][:, None])[:, 0]
