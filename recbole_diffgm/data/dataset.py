"""``SIDDataset``: RecBole's ``SequentialDataset`` plus each item's semantic ID."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from recbole.data.dataset import SequentialDataset

from recbole_diffgm.data import item_text
from recbole_diffgm.data.sid import SIDSettings, build_sids

logger = logging.getLogger(__name__)

PADDING_CODE = -1  # the codes of item id 0 (RecBole's padding item): no code at all


class SIDDataset(SequentialDataset):
    """A sequential dataset whose items carry semantic IDs.

    After RecBole has loaded, filtered and remapped the data, the SID stage (``recbole_diffgm.data.sid``)
    turns the ``.item`` text of every item in RecBole's vocabulary into ``n_digit`` codes.

    Attributes:
        item_sid (torch.LongTensor): ``[n_items, n_digits]``, row ``i`` = the codes of internal item id ``i``;
            row 0 (padding) is all ``PADDING_CODE``. ``n_digits`` is ``n_digit``, plus one with
            ``sid_collision: disambiguate``.
        sid_report (CollisionReport): unique SIDs, colliding items, code usage (before the collision policy).
        sid_key (str): digest of everything that determined the codes (texts, text model, quantizer, policy).
    """

    def __init__(self, config):
        super().__init__(config)
        settings = SIDSettings.from_config(config)
        text = self.item_texts(config)
        if text.missing_items:
            logger.warning(f"{text.missing_items:,} of {self.item_num - 1:,} items have no row in the .item file")
        catalogue_only = self.item_num - 1 - len(np.unique(np.asarray(self.inter_feat[self.iid_field])))
        if catalogue_only:
            logger.info(f"{catalogue_only:,} items of the .item file have no interaction; they get SIDs too")
        if text.fallback_items:
            logger.warning(f"{text.fallback_items:,} items have no usable text in {list(config['item_text_fields'])}; "
                           "their text is 'Item: <item id>.'")

        result = build_sids(text.texts, settings, show_progress=config["show_progress"])
        padding = np.full((1, result.codes.shape[1]), PADDING_CODE)
        self.item_sid = torch.from_numpy(np.concatenate([padding, result.codes]))
        self.sid_report = result.report
        self.sid_key = result.key
        logger.info(f"semantic IDs ({settings.sid_quantizer}): {result.report}")

    def item_texts(self, config) -> item_text.ItemTexts:
        item_file = Path(config["data_path"]) / f"{self.dataset_name}.item"
        item_tokens = list(self.field2id_token[self.iid_field][1:])
        return item_text.item_texts(item_file, self.iid_field, dict(config["item_text_fields"]), item_tokens,
                                    config["field_separator"])

    def is_current(self, config) -> bool:
        """Whether a saved copy of this dataset still has the SIDs that ``config`` would build."""
        return self.sid_key == SIDSettings.from_config(config).codes_key(self.item_texts(config).texts)
