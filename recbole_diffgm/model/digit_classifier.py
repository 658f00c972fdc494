r"""DigitClassifier
################################################

DiffGM's network (``SIDTransformer``, its semantic IDs and mask embeddings) trained and used as a parallel
per-digit classifier, not as a diffusion model: every training target is seen with all of its digits hidden (one
view, no On-policy Coherent Noising), optionally with a cross-entropy over every catalogue SID
(``catalogue_loss_weight``), and every catalogue SID is scored in one pass by the sum of its digits'
log-probabilities (no Confidence-guided Parallel Denoising). This is the objective and the scoring of RPG
(Hou et al., "Generating Long Semantic IDs in Parallel for Recommendation", KDD 2025) on DiffGM's network; it is
DiffGM's own method's control, and the benchmark names it for what it runs.
"""

from __future__ import annotations

from recbole_diffgm.errors import InputError
from recbole_diffgm.model.diffgm import DiffGM


class DigitClassifier(DiffGM):
    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        diffusion = {"ocn_views": self.ocn_views != 1, "decode_mode": self.decode_mode != "one_pass",
                     "rerank_size": self.rerank_size != 0}
        for key, differs in diffusion.items():
            if differs:
                raise InputError(f"DigitClassifier trains on the all-masked view alone and scores every SID in one pass "
                                 f"(ocn_views 1, decode_mode one_pass, rerank_size 0); {key} {config[key]!r} is part of "
                                 "DiffGM's method: run --model=DiffGM for it")
