r"""DiffGMHybrid, DigitClassifierHybrid
################################################

References:
    Hung Yang et al. "Unifying Generative and Dense Retrieval for Sequential Recommendation." arXiv 2411.18814, 2024
    (LIGER: a dense item vector from the item's text and SID beside generated SIDs).
    Yuhao Yang et al. "Sparse Meets Dense: Unified Generative Recommendations with Cascaded Sparse-Dense
    Representations." arXiv 2503.02453, 2025 (COBRA).

A generative model over semantic IDs with a dense channel beside it. The generative side (DiffGM, or its
DigitClassifier control) proposes and scores as it does alone; a dense head scores every item by the inner product of
the history's last encoder state with the item's vector, and at item level the fused score is the generative item
score plus ``dense_weight`` times the dense log-probability (``GenerativeRecommender.full_sort_predict``).

An item's vector is built from what every item has, so a cold item or one added after training is scored like any
other: the sum of its SID's code embeddings (the generative head's own output table), a learned projection of its
frozen text embedding (``TextAdaptor``, UniSRec's adaptor), and, with ``hybrid_item_ids``, a vector of its own for
the items of the training catalogue (``SIDDataset.catalogue_item_ids``; zero for cold and new items). A history item
enters the encoder as the SID model's item vector plus the same text projection and id vector. The dense head is
trained beside the generative loss at every position of a history (``train_per_position``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from recbole_diffgm.data.dataset import SIDDataset
from recbole_diffgm.errors import InputError
from recbole_diffgm.model.diffgm import DiffGM
from recbole_diffgm.model.digit_classifier import DigitClassifier
from recbole_diffgm.model.text_sasrec import TextAdaptor


class DenseItemHybrid:
    """The dense channel of a hybrid (module docstring), mixed into a ``SIDTransformer`` model."""

    def __init__(self, config, dataset: SIDDataset):
        if not config["dense_head"]:
            name = type(self).__name__
            raise InputError(f"{name} is a generative model with its dense head: dense_head false is "
                             f"--model={name.removesuffix('Hybrid')}")
        super().__init__(config, dataset)
        # The model's weight init draws every linear and embedding layer: an even mix of experts at first, and no
        # id vector for the items outside the training catalogue (padding_idx only keeps the row from training).
        nn.init.zeros_(self.text_adaptor.gate.weight)
        if self.item_ids:
            nn.init.zeros_(self.item_id_embedding.weight[0])

    def init_dense_items(self, config, dataset: SIDDataset) -> None:
        text = dataset.item_text_embeddings(config)
        self.register_buffer("item_text", text, persistent=False)  # rebuilt from the text, never trained
        self.text_adaptor = TextAdaptor(text.shape[1], config["n_embd"], config["adaptor_experts"],
                                        config["adaptor_dropout"])
        self.item_ids = bool(config["hybrid_item_ids"])
        if self.item_ids:  # row 1 + j: the catalogue's item j; row 0, every other item's, stays zero
            catalogue = dataset.catalogue_item_ids
            id_rows = torch.zeros(self.n_items, dtype=torch.long)
            id_rows[catalogue[catalogue > 0]] = torch.arange(1, len(catalogue) + 1)[catalogue > 0]
            self.register_buffer("id_rows", id_rows, persistent=False)
            self.item_id_embedding = nn.Embedding(len(catalogue) + 1, config["n_embd"], padding_idx=0)

    def item_side_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """``[..., D]``: what an item adds to its SID's vector: its text's projection and its id vector."""
        vectors = self.text_adaptor(self.item_text[items])
        if self.item_ids:
            vectors = vectors + self.item_id_embedding(self.id_rows[items])
        return vectors

    def embed_history(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        items, mask = super().embed_history(item_seq)
        return items + self.item_side_vectors(item_seq[mask]), mask

    def dense_item_vectors(self) -> torch.Tensor:
        items = torch.arange(self.n_items, device=self.item_tokens.device)
        # Each item's code embeddings summed (embedding_bag: a fifth of the time of a gather and a sum, backward
        # included); the padding item's row is scored -inf anyway.
        codes = F.embedding_bag(self.item_tokens, self.token_embedding.weight, mode="sum")
        return codes + self.item_side_vectors(items)


class DiffGMHybrid(DenseItemHybrid, DiffGM):
    """DiffGM (OCN training, CPD decoding) with the dense item channel."""


class DigitClassifierHybrid(DenseItemHybrid, DigitClassifier):
    """The DigitClassifier (all-masked objective, one-pass scoring) with the dense item channel."""
