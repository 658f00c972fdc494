"""Every recipe of properties/recipes runs: a model with it trains, validates and tests on the tiny catalogue.

Each run is also a fingerprint of what the code computes for a benchmark row (its test metrics, selection score
and trained weights), compared with the one recorded for its code version (``benchmark.code_version``: the version of its kind, and of
each changed part of the code its config uses) in ``tests/data/run-fingerprints.json``. Finished benchmark runs are
reused by that version, so a change that alters what a row computes must bump it (``RUN_CODE_VERSION``, or a part
of ``PART_VERSIONS`` for the rows that use it): the comparison fails until it does.
``RECORD_FINGERPRINTS=1 python -m pytest tests/test_recipes.py`` records the fingerprints of a new version (or of
a new row); it refuses to change one recorded for the current version.

A generative row's fingerprint holds a digest of the SIDs it trained on, and is compared only on the same SIDs: on
the tiny catalogue some quantizer settings put items on code boundaries where the float rounding of a CPU's kernels
decides (sid16 splits 16 PCA dimensions into 16 one-dimensional OPQ subspaces: an Intel Xeon and an AMD EPYC gave
other codes with the same code and libraries). The Beauty benchmark reads shipped SIDs, so what its runs compute
is the model given its SIDs; other SIDs here are reported as a warning, the run itself still trains and tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import numpy as np
import pytest
import torch
from conftest import NAME, TEST_DATA

from recbole_diffgm import get_trainer, load_data_and_model, run_recbole_diffgm
from recbole_diffgm.benchmark import Row, code_version
from recbole_diffgm.compat import load_checkpoint

GENERATIVE_ROWS = ["DiffGM@DiffGM-cpu", "DigitClassifier@DigitClassifier-cpu", "DigitClassifier@DigitClassifier-cpu+sampled-catalogue-loss", "DiffGM@DiffGM-ocn-cpu", "DiffGM@rescore", "DiffGM@DiffGM-release", "DiffGM@sid-reassign", "DiffGM@sid-disambiguate",
                   "DiffGM@sid8", "DiffGM@sid16", "DiffGM@all-masked", "DiffGM@catalogue-loss", "DiffGM@one-pass",
                   "DiffGM@per-position", "DiffGM@dense-head", "DiffGM@cross-attention-shared", "ARGM@DiffGM-cpu",
                   "ARGM@sid-reassign+per-position", "TIGER@TIGER-cpu", "DigitClassifierHybrid@DigitClassifier-cpu",
                   "DiffGMHybrid@DiffGM-ocn-cpu"]
RECBOLE_ROWS = ["SASRec", "SASRec@SASRec-strong", "SASRecF@SASRecF-text", "GRU4Rec", "BERT4Rec", "TextSASRec"]
# What a row needs loaded beyond fast_config's item title (the Beauty dataset file loads these fields too).
ROW_FIELDS = {"SASRecF@SASRecF-text": ["brand", "categories"]}
FINGERPRINTS = TEST_DATA / "run-fingerprints.json"


def fingerprint(result: dict) -> dict:
    """What a run computed, rounded so that only a change in the computation moves it."""
    checkpoint = load_checkpoint(result["model_file"])
    weights = sum(tensor.double().abs().sum().item() for tensor in checkpoint["state_dict"].values()
                  if tensor.is_floating_point())
    found = {"test": {metric: round(float(value), 4) for metric, value in sorted(result["test_result"].items())},
             "best_valid_score": round(float(result["best_valid_score"]), 4), "weights_l1": float(f"{weights:.6g}")}
    catalogue = (checkpoint.get("other_parameter") or {}).get("sid_catalogue")
    if catalogue:
        codes = np.ascontiguousarray(np.asarray(catalogue["codes"], dtype=np.int64))
        found["sids"] = hashlib.sha256(codes.tobytes()).hexdigest()[:16]
    return found


def check_fingerprint(spec: str, kind: str, result: dict) -> None:
    recorded = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.is_file() else {}
    version = code_version(load_checkpoint(result["model_file"])["config"], kind == "generative")
    runs = recorded.setdefault(kind, {}).setdefault(version, {})
    found = fingerprint(result)
    if spec in runs and runs[spec].get("sids") != found.get("sids"):
        warnings.warn(f"{spec}: this machine built other SIDs on the tiny catalogue than the recorded fingerprint's "
                      f"({found.get('sids')} against {runs[spec].get('sids')}): its fingerprint is not comparable here")
    elif spec in runs:
        assert runs[spec] == found, (
            f"{spec} computes something else than {kind} code version {version} did: if the change is meant to, bump "
            f"RUN_CODE_VERSION['{kind}'] or a part of PART_VERSIONS in recbole_diffgm/benchmark.py and record the new "
            "fingerprints "
            f"(RECORD_FINGERPRINTS=1 python -m pytest tests/test_recipes.py)")
    elif os.environ.get("RECORD_FINGERPRINTS"):
        runs[spec] = found
        FINGERPRINTS.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    else:
        pytest.fail(f"no fingerprint of {spec} for {kind} code version {version}: record it with "
                    "RECORD_FINGERPRINTS=1 python -m pytest tests/test_recipes.py")


@pytest.mark.parametrize("spec", GENERATIVE_ROWS)
def test_a_generative_recipe_trains_and_tests(tiny_config, spec):
    row = Row.parse(spec)
    settings = {key: value for key, value in tiny_config.items()
                if key not in ("valid_metric", "valid_metric_weights", "eval_level")}  # what a recipe may set
    settings |= {"epochs": 1, "topk": [5, 10], "valid_metric": "NDCG@10", "valid_beam_size": 16, "test_beam_size": 16,
                 "train_batch_size": 16}
    if row.model == "TIGER":
        settings |= {"sid_quantizer": "rq_kmeans"}  # RQ-VAE training is tested on its own; the recipe is the point
    if spec.endswith("sampled-catalogue-loss"):  # the recipe's 1,024 outnumber the tiny catalogue's SIDs: fewer, so
        settings |= {"catalogue_loss_samples": 8}  # that the sampled softmax is what runs
    result = run_recbole_diffgm(row.model, NAME, row.config_files(None), settings)
    assert result["test_result"] and result["epochs_run"] == 1
    level = "sid_" if spec.endswith("DiffGM-release") else ""
    assert set(result["test_result"]) == {f"{level}{metric}@{k}" for metric in ("recall", "ndcg") for k in (5, 10)}
    check_fingerprint(spec, "generative", result)


def target_ranks(model, data) -> torch.Tensor:
    """Each evaluation row's target rank (1: first) among every item by the model's full-sort scores, the padding
    item left out and ties counted in the target's favour."""
    model.eval()
    ranks = []
    with torch.no_grad():
        for interaction, *_ in data:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = float("-inf")
            ranks.append(1 + (scores > scores.gather(1, interaction[model.ITEM_ID][:, None])).sum(dim=1))
    return torch.cat(ranks).double()


def metrics_at(ranks: torch.Tensor, ks: tuple[int, ...]) -> dict[str, float]:
    """Recall@k and NDCG@k of one target per row: the share ranked in the top k, and 1 / log2(1 + rank) there."""
    return {f"{name}@{k}": value.mean().item() for k in ks for name, value in
            (("recall", (ranks <= k).double()), ("ndcg", torch.where(ranks <= k, 1 / torch.log2(ranks + 1), 0.0)))}


@pytest.mark.parametrize("spec", RECBOLE_ROWS)
def test_a_recbole_row_trains_and_tests(fast_config, spec):
    """A row's test metrics are those of its saved model's own scores for the test users' next items, recomputed
    here. One epoch on the slice puts few targets, if any, in a top 10, so the saved model is evaluated again with a
    top 1000 too, which every row hits: a metric computed from the wrong items or scores cannot agree there."""
    row = Row.parse(spec)
    load_col = {**fast_config["load_col"], "item": fast_config["load_col"]["item"] + ROW_FIELDS.get(spec, [])}
    result = run_recbole_diffgm(row.model, "beauty-slice", row.config_files(None),
                                {**fast_config, "epochs": 1, "load_col": load_col})
    config, model, _, _, _, test = load_data_and_model(result["model_file"], {"topk": [5, 10, 1000]})
    ranks = target_ranks(model, test)
    assert len(ranks) == result["test_users"]
    expected = metrics_at(ranks, (5, 10, 1000))
    assert result["test_result"] == pytest.approx({metric: expected[metric] for metric in result["test_result"]},
                                                  abs=1e-4)
    again = get_trainer(config["MODEL_TYPE"], config["model"])(config, model).evaluate(test, load_best_model=False)
    assert expected["recall@1000"] > 0 and again == pytest.approx(expected, abs=1e-4)
    check_fingerprint(spec, "recbole", result)
