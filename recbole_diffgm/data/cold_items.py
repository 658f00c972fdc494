"""The item cold-start protocol: a share of the catalogue's items that no model trains on.

``cold_items: s`` (0 < s < 1) holds out ``round(s * n)`` of the ``n`` items that have interactions, drawn at random
with ``cold_items_seed`` from the item tokens in sorted order, so every model, whatever its dataset class and its
internal item ids, and every training seed hold out the same items (the TIGER lineage's random held-out items; a
split by first appearance in time would also make the cold cases the latest ones, mixing "new" with "recent").

After RecBole's own split (leave-one-out, or any other), the training split loses every trace of a cold item:
rows whose target is cold are dropped, and cold items are taken out of the histories of the others (each history
keeps its order; a history left empty drops its row). RecBole cuts a history to ``MAX_ITEM_LIST_LENGTH`` before
this, so a history that held cold items is that many items shorter than the cut allows. Validation and test keep
every case and every history as they are: a deployed model sees new items in histories too, and a case whose
target is cold is a ``cold`` case (``cold_case_mask``), the others ``in-set``.
"""

from __future__ import annotations

import numpy as np
import torch
from recbole.data.dataset import Dataset, KnowledgeBasedDataset, SequentialDataset

from recbole_diffgm.errors import InputError


def cold_item_ids(tokens: np.ndarray, interacted: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The internal ids of the cold items, ascending: ``round(share * len(interacted))`` of the ids ``interacted``,
    drawn with ``seed`` from their ``tokens`` (``tokens[id]``) in sorted order."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1:
        raise InputError(f"cold_items {share!r}: give the share of items to hold out, a number between 0 and 1")
    candidates = interacted[np.argsort(tokens[interacted], kind="stable")]
    count = round(share * len(candidates))
    if count == 0 or count == len(candidates):
        raise InputError(f"cold_items {share}: of {len(candidates):,} items with interactions, it holds out "
                         f"{count:,}; choose a share that leaves some items on both sides")
    return np.sort(np.random.default_rng(seed).choice(candidates, size=count, replace=False))


def without_cold_items(inter_feat, cold: torch.Tensor, item_field: str, list_field: str | None,
                       length_field: str | None):
    """The rows of a training split with no cold item (``cold``: a bool mask over item ids): rows whose target is
    cold dropped; with a history (``list_field`` and its ``length_field``), cold items taken out of every list field
    of the row alike (``*_list`` fields of the history's shape), and rows left with an empty history dropped."""
    inter_feat = inter_feat[~cold[inter_feat[item_field]]]  # a copy: the split's own rows stay as they are
    if list_field is None:
        return inter_feat
    history, length = inter_feat[list_field], inter_feat[length_field]
    kept = (torch.arange(history.shape[1]) < length[:, None]) & ~cold[history]
    order = torch.argsort((~kept).to(torch.int8), dim=1, stable=True)  # the kept positions first, in order
    new_length = kept.sum(dim=1)
    inside = torch.arange(history.shape[1]) < new_length[:, None]
    for field in list(inter_feat.interaction):
        values = inter_feat[field]
        if field == list_field or (field.endswith("_list") and values.shape[:2] == history.shape):
            moved = values.gather(1, order.view(*order.shape, *[1] * (values.dim() - 2)).expand_as(values))
            inside_shaped = inside.view(*inside.shape, *[1] * (values.dim() - 2))
            inter_feat[field] = torch.where(inside_shaped, moved, torch.zeros_like(moved))
    inter_feat[length_field] = new_length
    return inter_feat[new_length > 0]


class ColdItemSplit:
    """A RecBole dataset class with the cold-start protocol (``cold_items``; nothing changes without it).

    Attributes:
        cold_items (torch.BoolTensor | None): ``[n_items]``, the held-out items; ``None`` without the protocol.
    """

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.cold_items, self.cold_settings = None, (config["cold_items"], config["cold_items_seed"])
        if not config["cold_items"]:
            return
        item_ids = [np.asarray(self.inter_feat[self.iid_field])]
        list_field = getattr(self, "item_id_list_field", None)
        if list_field in self.inter_feat:  # sequential: an item may appear in histories only
            item_ids.append(np.asarray(self.inter_feat[list_field]).ravel())
        interacted = np.setdiff1d(np.unique(np.concatenate(item_ids)), [0])
        tokens = np.asarray(self.field2id_token[self.iid_field])
        ids = cold_item_ids(tokens, interacted, config["cold_items"], int(config["cold_items_seed"]))
        self.cold_items = torch.zeros(self.item_num, dtype=torch.bool)
        self.cold_items[torch.from_numpy(ids)] = True
        self.logger.info(f"cold_items {config['cold_items']}: {len(ids):,} of {len(interacted):,} items held out of "
                         f"training (cold_items_seed {config['cold_items_seed']})")

    def is_current(self, config) -> bool:
        """A saved copy is current when RecBole's dataset settings (``utils.create_dataset`` checks them) and the
        protocol's are."""
        return self.cold_settings == (config["cold_items"], config["cold_items_seed"])

    def build(self) -> list:
        datasets = super().build()
        if self.cold_items is None:
            return datasets
        train = datasets[0]
        sequential = getattr(self, "item_id_list_field", None) in train.inter_feat
        rows = without_cold_items(train.inter_feat, self.cold_items, self.iid_field,
                                  self.item_id_list_field if sequential else None,
                                  self.item_list_length_field if sequential else None)
        self.logger.info(f"cold_items: {len(train.inter_feat) - len(rows):,} of {len(train.inter_feat):,} training "
                         "rows dropped (a cold target, or a history of cold items only); cold items taken out of the "
                         "other histories")
        datasets[0] = train.copy(rows)  # every split is a copy of this dataset: each has its cold_items
        return datasets


class ColdSequentialDataset(ColdItemSplit, SequentialDataset):
    """RecBole's ``SequentialDataset`` with the cold-start protocol."""


class ColdDataset(ColdItemSplit, Dataset):
    """RecBole's ``Dataset`` (general and context-aware models) with the cold-start protocol."""


class ColdKnowledgeBasedDataset(ColdItemSplit, KnowledgeBasedDataset):
    """RecBole's ``KnowledgeBasedDataset`` with the cold-start protocol."""


def with_cold_items(dataset_class: type) -> type:
    """``dataset_class`` with the protocol: one of the classes above, or a subclass made for a model's own dataset
    class (RecBole's ``<Model>Dataset``)."""
    if issubclass(dataset_class, ColdItemSplit):
        return dataset_class
    known = {SequentialDataset: ColdSequentialDataset, Dataset: ColdDataset,
             KnowledgeBasedDataset: ColdKnowledgeBasedDataset}
    return known.get(dataset_class) or type(dataset_class.__name__, (ColdItemSplit, dataset_class), {})


def cold_case_mask(dataset) -> torch.Tensor | None:
    """``[rows]``: which cases of an evaluation split have a cold target; ``None`` without the protocol."""
    cold = getattr(dataset, "cold_items", None)
    return None if cold is None else cold[dataset.inter_feat[dataset.iid_field]]
