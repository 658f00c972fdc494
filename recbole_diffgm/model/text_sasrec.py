r"""TextSASRec
################################################

Reference:
    Yupeng Hou et al. "Towards Universal Sequence Representation Learning for Recommender Systems." KDD 2022
    (UniSRec; its inductive setting: items represented by their text alone).

RecBole's SASRec whose item vectors are not learned per item id but computed from each item's text: the item's
frozen sentence embedding (``ItemTextDataset.item_text_embeddings``, the SID stage's text model) through a
mixture-of-experts adaptor (UniSRec's parametric whitening experts: each expert ``W_e (x - b_e)``, mixed by a
softmax gate over ``x``). The same vectors embed the history and score every item, so an item that never trained
(a cold or a newly added one) is scored from its text like any other: the dense-text baseline of the item
cold-start protocol (``cold_items``).
"""

from __future__ import annotations

import torch
from recbole.model.sequential_recommender.sasrec import SASRec
from torch import nn

from recbole_diffgm.data.dataset import ItemTextDataset
from recbole_diffgm.errors import InputError


class TextAdaptor(nn.Module):
    """Text embeddings ``[N, d_text]`` -> item vectors ``[N, d]``: ``experts`` parametric whitening experts, mixed
    by a softmax gate (UniSRec's MoE adaptor, without its gate noise)."""

    def __init__(self, text_dim: int, hidden_size: int, experts: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.centres = nn.Parameter(torch.zeros(experts, text_dim))
        self.projections = nn.Parameter(torch.empty(experts, text_dim, hidden_size))
        nn.init.normal_(self.projections, std=0.02)
        self.gate = nn.Linear(text_dim, experts, bias=False)
        nn.init.zeros_(self.gate.weight)  # an even mix at first

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        gates = self.gate(text).softmax(dim=-1)  # [..., E]
        # W_e (x - b_e) = W_e x - W_e b_e: no [..., E, d_text] tensor is held
        experts = torch.einsum("...d,edh->...eh", self.dropout(text), self.projections)
        experts = experts - torch.einsum("ed,edh->eh", self.centres, self.projections)
        return (gates[..., None] * experts).sum(dim=-2)


class TextItemEmbedding(nn.Module):
    """What SASRec reads as its item embedding: ``embedding(ids)`` and ``embedding.weight`` (every item), computed
    from the items' frozen text embeddings by the adaptor; the padding item 0 stays the zero vector."""

    def __init__(self, text_embeddings: torch.Tensor, hidden_size: int, experts: int, dropout: float):
        super().__init__()
        self.register_buffer("text", text_embeddings, persistent=False)  # rebuilt from the text, never trained
        self.adaptor = TextAdaptor(text_embeddings.shape[1], hidden_size, experts, dropout)

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.adaptor(self.text[item_ids]) * (item_ids > 0)[..., None]

    @property
    def weight(self) -> torch.Tensor:
        return self.forward(torch.arange(len(self.text), device=self.text.device))


class TextSASRec(SASRec):
    """SASRec over item vectors computed from item texts (module docstring)."""

    dataset_class = ItemTextDataset
    reads_item_text = True  # its run key includes the text settings (benchmark.run_key)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        if config["loss_type"] != "CE":
            raise InputError(f"TextSASRec trains with loss_type CE (a softmax over every item's text vector), "
                             f"not {config['loss_type']!r}")
        text = dataset.item_text_embeddings(config)
        self.item_embedding = TextItemEmbedding(text, self.hidden_size, config["adaptor_experts"],
                                                config["adaptor_dropout"])
        # The cold items (cold_items) are left out of the training softmax, as a model trained before they came
        # never saw them, as negatives either (RecBole's own models, unchanged, keep them there).
        self.register_buffer("cold_items", getattr(dataset, "cold_items", None), persistent=False)

    def calculate_loss(self, interaction) -> torch.Tensor:
        if self.cold_items is None:
            return super().calculate_loss(interaction)
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        logits = (seq_output @ self.item_embedding.weight.T).masked_fill(self.cold_items, float("-inf"))
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])
