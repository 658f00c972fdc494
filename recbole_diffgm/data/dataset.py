"""``SIDDataset``: RecBole's ``SequentialDataset`` plus each item's semantic ID; ``FileOrderSequentialDataset``:
a sequential dataset whose ``.inter`` has no time column, ordered as the file is."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset
from recbole.utils import FeatureSource, FeatureType

from recbole_diffgm.data import item_text
from recbole_diffgm.data.cold_items import ColdItemSplit
from recbole_diffgm.data.sid import (
    SIDSettings,
    build_sids,
    encode_new_items,
    shipped_sids_file,
)
from recbole_diffgm.data.sid.collisions import collision_report
from recbole_diffgm.data.sid.embed import embed_texts
from recbole_diffgm.errors import InputError

logger = logging.getLogger(__name__)

PADDING_CODE = -1  # the codes of item id 0 (RecBole's padding item): no code at all


class FileOrderSequentialDataset(ColdItemSplit, SequentialDataset):
    """RecBole's ``SequentialDataset``, ordered by the file when the ``.inter`` has no ``TIME_FIELD`` column.

    RecBole's sequential datasets accept only ``order: TO`` and fail without a time column. Here each row's
    position in the file becomes ``TIME_FIELD``: RecBole's time sorts then keep every user's rows in the order
    the file lists them (the keys are unique, so no sort can reorder them), and leave-one-out holds out each
    user's last rows of the file. A time column in the file is used as it is. With ``cold_items``, the item
    cold-start protocol (``ColdItemSplit``).
    """

    def _load_inter_feat(self, token, dataset_path):
        super()._load_inter_feat(token, dataset_path)
        if (self.time_field is None or self.benchmark_filename_list is not None or self.inter_feat is None
                or self.time_field in self.inter_feat):
            return
        self.inter_feat[self.time_field] = np.arange(len(self.inter_feat), dtype=np.float64)
        self.set_field_property(self.time_field, FeatureType.FLOAT, FeatureSource.INTERACTION, 1)
        self.field2bucketnum[self.time_field] = 2  # as RecBole's loader sets for every float column
        logger.warning(f"{Path(dataset_path) / (token + '.inter')} has no '{self.time_field}' column (TIME_FIELD): "
                       "each user's sequence is in file order, the user's rows in the order they appear in the "
                       "file (set TIME_FIELD if the time column has another name)")



class ItemTextDataset(FileOrderSequentialDataset):
    """A sequential dataset whose items have a text (``item_texts``: ``item_text_fields`` of the ``.item`` file) and
    its sentence embedding (``item_text_embeddings``), for the models that read items by their text: every item of
    the catalogue, cold or new, has one."""

    def item_texts(self, config) -> item_text.ItemTexts:
        item_file = Path(config["data_path"]) / f"{self.dataset_name}.item"
        item_tokens = list(self.field2id_token[self.iid_field][1:])
        return item_text.item_texts(item_file, self.iid_field, item_text.field_labels(config["item_text_fields"]),
                                    item_tokens, config["field_separator"])

    def item_text_embeddings(self, config) -> torch.Tensor:
        """``[n_items, dim]``: each item's text through ``sent_emb_model`` (the SID stage's embeddings and cache,
        L2-normalised); row 0, the padding item, zeros."""
        settings = SIDSettings.from_config(config)
        embeddings = embed_texts(self.item_texts(config).texts, settings.sent_emb_model, settings.sent_emb_batch_size,
                                 settings.sent_emb_device, settings.cache_dir, config["show_progress"])
        return torch.from_numpy(np.concatenate([np.zeros((1, embeddings.shape[1]), np.float32), embeddings]))


class SIDDataset(ItemTextDataset):
    """A sequential dataset whose items carry semantic IDs.

    After RecBole has loaded, filtered and remapped the data, the SID stage (``recbole_diffgm.data.sid``)
    turns the ``.item`` text of every item in RecBole's vocabulary into ``n_digit`` codes.

    Attributes:
        item_sid (torch.LongTensor): ``[n_items, n_digit]``, row ``i`` = the codes of internal item id ``i``;
            row 0 (padding) is all ``PADDING_CODE``; ``n_digit`` digits (the config's, plus one with
            ``sid_collision: disambiguate``).
        sid_report (CollisionReport): unique SIDs, colliding items, code usage (before the collision policy).
        sid_key (str): digest of everything that determined the codes (texts, text model, quantizer, policy).
        sid_source (str): ``built``, ``cache``, the path of the SIDs shipped with the dataset, or ``model`` (a
            trained model's catalogue, extended to new items).
        sid_fitted_tokens (list[str]): the items whose texts fitted the quantizer: every item, or with
            ``cold_items`` the others (the cold items get theirs from their text alone, as items added later do).
        catalogue_item_ids (torch.LongTensor): the internal ids of the items a model trains with (the SID catalogue
            it saves, in its order): every item, or with ``cold_items`` the others; loaded with a trained model's
            catalogue, its items, wherever they are now (0 for one gone from the data; items added since are not
            among them).
        item_popularity (torch.LongTensor): ``[n_items]``: each item's occurrences, which order the items that
            share a SID: in every interaction, and on every split ``build`` returns in the training split's
            (``_popularity``).

    With ``sid_catalogue`` (a trained model's ``{"key", "tokens", "codes"}``: the SIDs it was trained on), the
    items of that catalogue keep their SIDs, and items added to the ``.item`` file since get theirs from their
    text with the quantizer fitted then (``encode_new_items``): a trained model can recommend new items.
    """

    def __init__(self, config, sid_catalogue: dict | None = None):
        super().__init__(config)
        # Every interaction (the model of an unsplit dataset); build gives each split the training split's count.
        self.item_popularity = torch.bincount(torch.as_tensor(np.asarray(self.inter_feat[self.iid_field])),
                                              minlength=self.item_num)
        settings = SIDSettings.from_config(config)
        text = self.item_texts(config)
        fields = item_text.field_labels(config["item_text_fields"])
        default = getattr(config, "resolved_defaults", {}).get("item_text_fields")
        logger.info(default or f"item text fields (item_text_fields): {', '.join(fields)}")
        if text.missing_items:
            logger.warning(f"{text.missing_items:,} of {self.item_num - 1:,} items have no row in the .item file")
        catalogue_only = self.item_num - 1 - len(np.unique(np.asarray(self.inter_feat[self.iid_field])))
        if catalogue_only:
            logger.info(f"{catalogue_only:,} items of the .item file have no interaction; they get SIDs too")
        if text.fallback_items:
            logger.warning(f"{text.fallback_items:,} items have no usable text in {list(fields)}; "
                           "their text is 'Item: <item id>.'")

        tokens = list(self.field2id_token[self.iid_field][1:])
        if sid_catalogue is None and self.cold_items is not None:  # as a model trained before the cold items came
            sid_catalogue = self._catalogue_without_cold_items(config, settings, text.texts, tokens)
        if sid_catalogue is None:
            result = build_sids(text.texts, settings, show_progress=config["show_progress"],
                                shipped=self.shipped_sids_file(config, settings, text.texts))
            codes, self.sid_report, self.sid_key = result.codes, result.report, result.key
            self.sid_source, self.sid_fitted_tokens = result.source, tokens
            self.catalogue_item_ids = torch.arange(1, self.item_num)
        else:
            codes = self._extend_catalogue(config, settings, text.texts, sid_catalogue)
            self.sid_report, self.sid_key = collision_report(codes[:, :settings.quantizer.n_digit]), sid_catalogue["key"]
            self.sid_source = "model"
            self.sid_fitted_tokens = list(sid_catalogue.get("fitted_tokens", sid_catalogue["tokens"]))
            ids = self.field2token_id[self.iid_field]
            self.catalogue_item_ids = torch.tensor([ids.get(token, 0) for token in sid_catalogue["tokens"]])
        padding = np.full((1, codes.shape[1]), PADDING_CODE)
        self.item_sid = torch.from_numpy(np.concatenate([padding, codes]))
        logger.info(f"semantic IDs ({settings.sid_quantizer}): {self.sid_report}")

    def _catalogue_without_cold_items(self, config, settings: SIDSettings, texts: list[str], tokens: list[str]) -> dict:
        """The SID catalogue of the items that are not cold, fitted on their texts alone: what a model trained before
        the cold items existed knows (``_extend_catalogue`` then gives the cold items theirs, as to new items)."""
        known = ~self.cold_items[1:].numpy()
        known_texts = [text for text, keep in zip(texts, known) if keep]
        result = build_sids(known_texts, settings, show_progress=config["show_progress"])
        known_tokens = [token for token, keep in zip(tokens, known) if keep]
        return {"key": result.key, "tokens": known_tokens, "codes": result.codes}

    def _extend_catalogue(self, config, settings: SIDSettings, texts: list[str], catalogue: dict) -> np.ndarray:
        """Codes of this dataset's items: a catalogue item's own, a new item's from its text, through the quantizer
        fitted on the texts of the catalogue's ``fitted_tokens`` (all its items unless some came later)."""
        tokens = list(self.field2id_token[self.iid_field][1:])
        position = {token: index for index, token in enumerate(catalogue["tokens"])}
        new = [index for index, token in enumerate(tokens) if token not in position]
        codes = np.empty((len(tokens), catalogue["codes"].shape[1]), dtype=np.int64)
        known = [index for index, token in enumerate(tokens) if token in position]
        codes[known] = catalogue["codes"][[position[tokens[index]] for index in known]]
        if new:
            catalogue_texts = item_text.item_texts(
                Path(config["data_path"]) / f"{self.dataset_name}.item", self.iid_field,
                item_text.field_labels(config["item_text_fields"]),
                list(catalogue.get("fitted_tokens", catalogue["tokens"])), config["field_separator"]).texts
            if settings.codes_key(catalogue_texts) != catalogue["key"]:
                raise InputError(f"{Path(config['data_path']) / (self.dataset_name + '.item')}: the texts or SID "
                                 "settings of the items the model was trained on have changed, so new items cannot "
                                 "get SIDs from the model's quantizer; restore them or retrain")
            codes[new] = encode_new_items([texts[index] for index in new], catalogue_texts, catalogue["codes"],
                                          settings, show_progress=config["show_progress"],
                                          shipped=self.shipped_sids_file(config, settings, catalogue_texts))
            logger.info(f"{len(new):,} items are new since training: their SIDs come from their text through the "
                        f"model's {settings.sid_quantizer} quantizer (no refit)")
        return codes

    def build(self) -> list:
        """RecBole's splits, each with the training split's ``item_popularity``, counted before
        ``train_per_position`` cuts that split to one row per user, its longest prefix (the model reads every
        position of it), instead of one row per prefix."""
        datasets = super().build()
        train = datasets[0]
        popularity = self._popularity(train)
        if self.config["train_per_position"]:
            order, _, last = self._rows_by_user(train)
            datasets[0] = train.copy(train.inter_feat[torch.from_numpy(np.sort(order[last]))])
            logger.info(f"train_per_position: {last.sum():,} training rows, one per user, instead of {len(order):,}")
        for split in datasets:
            split.item_popularity = popularity
        return datasets

    def _rows_by_user(self, split) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The rows of ``split`` ordered by user, then history length, and which of them are each user's first
        (shortest history) and last (longest)."""
        users = np.asarray(split.inter_feat[self.uid_field])
        order = np.lexsort((np.asarray(split.inter_feat[self.item_list_length_field]), users))
        first, last = np.ones((2, len(order)), dtype=bool)  # (an empty split has neither)
        first[1:] = last[:-1] = users[order][1:] != users[order][:-1]
        return order, first, last

    def _popularity(self, split) -> torch.Tensor:
        """``[n_items]``: each item's occurrences in the sequences of ``split``'s RecBole prefix rows, every item of
        each user's sequence once: every row's target, plus the history of each user's first row, the items before
        its target (with RecBole's prefix rows the user's first item, which no row has as its target). A history
        cut to ``MAX_ITEM_LIST_LENGTH`` loses none: what it cuts are earlier rows' targets or the first history."""
        order, first, _ = self._rows_by_user(split)
        first_histories = split.inter_feat[self.item_id_list_field][torch.from_numpy(order[first])]
        items = torch.cat([split.inter_feat[self.iid_field], first_histories[first_histories > 0]])
        return torch.bincount(items, minlength=self.item_num)

    def shipped_sids_file(self, config, settings: SIDSettings, texts: list[str]) -> Path:
        """Where this dataset would ship the SIDs of ``settings``: beside its atomic files."""
        return shipped_sids_file(Path(config["data_path"]), self.dataset_name, settings, texts)

    def is_current(self, config) -> bool:
        """Whether a saved copy of this dataset still has the protocol and the SIDs that ``config`` would build."""
        texts = item_text.item_texts(Path(config["data_path"]) / f"{self.dataset_name}.item", self.iid_field,
                                     item_text.field_labels(config["item_text_fields"]), self.sid_fitted_tokens,
                                     config["field_separator"]).texts
        return super().is_current(config) and self.sid_key == SIDSettings.from_config(config).codes_key(texts)
