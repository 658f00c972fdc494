"""Every recipe of properties/recipes runs: a model with it trains, validates and tests on the tiny catalogue.

Each run is also a fingerprint of what the code computes for a benchmark row (its test metrics, selection score
and trained weights), compared with the one recorded for the code version of its kind
(``benchmark.RUN_CODE_VERSION``) in ``tests/data/run-fingerprints.json``. Finished benchmark runs are reused by
that version, so a change that alters what a row computes must bump it: the comparison fails until it does.
``RECORD_FINGERPRINTS=1 python -m pytest tests/test_recipes.py`` records the fingerprints of a new version (or of
a new row); it refuses to change one recorded for the current version.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import NAME, TEST_DATA

from recbole_diffgm import run_recbole_diffgm
from recbole_diffgm.benchmark import RUN_CODE_VERSION, Row
from recbole_diffgm.compat import load_checkpoint

GENERATIVE_ROWS = ["DiffGM@DiffGM-cpu", "DiffGM@DiffGM-item-cpu", "DiffGM@DiffGM-release", "DiffGM@sid-reassign", "DiffGM@sid-disambiguate",
                   "DiffGM@sid8", "DiffGM@sid16", "DiffGM@all-masked", "DiffGM@catalogue-loss", "DiffGM@one-pass",
                   "DiffGM@per-position", "DiffGM@dense-head", "DiffGM@cross-attention-shared", "ARGM@DiffGM-cpu",
                   "ARGM@sid-reassign+per-position", "TIGER@TIGER-cpu"]
RECBOLE_ROWS = ["SASRec", "SASRec@SASRec-strong", "GRU4Rec", "BERT4Rec"]
# Rows whose SIDs on the tiny catalogue depend on the CPU, so their fingerprint cannot be one number: sid16 splits
# the catalogue's 16 PCA dimensions into 16 one-dimensional OPQ subspaces, and the float rounding of the CPU's kernels
# moves items across code boundaries there (the same code, faiss, torch, sentence-transformers and transformers gave
# other SIDs, hence other metrics and weights, on an Intel Xeon than on the AMD EPYC where CI last passed). They still
# train and test here; the benchmark's Beauty rows read shipped SIDs.
CPU_DEPENDENT_SIDS = {"DiffGM@sid16"}
FINGERPRINTS = TEST_DATA / "run-fingerprints.json"


def fingerprint(result: dict) -> dict:
    """What a run computed, rounded so that only a change in the computation moves it."""
    state = load_checkpoint(result["model_file"])["state_dict"]
    weights = sum(tensor.double().abs().sum().item() for tensor in state.values() if tensor.is_floating_point())
    return {"test": {metric: round(float(value), 4) for metric, value in sorted(result["test_result"].items())},
            "best_valid_score": round(float(result["best_valid_score"]), 4), "weights_l1": float(f"{weights:.6g}")}


def check_fingerprint(spec: str, kind: str, result: dict) -> None:
    recorded = json.loads(FINGERPRINTS.read_text()) if FINGERPRINTS.is_file() else {}
    version = str(RUN_CODE_VERSION[kind])
    runs = recorded.setdefault(kind, {}).setdefault(version, {})
    found = fingerprint(result)
    if spec in runs:
        assert runs[spec] == found, (
            f"{spec} computes something else than {kind} code version {version} did: if the change is meant to, bump "
            f"RUN_CODE_VERSION['{kind}'] in recbole_diffgm/benchmark.py and record the new fingerprints "
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
    result = run_recbole_diffgm(row.model, NAME, row.config_files(None), settings)
    assert result["test_result"] and result["epochs_run"] == 1
    level = "sid_" if spec.endswith("DiffGM-release") else ""
    assert set(result["test_result"]) == {f"{level}{metric}@{k}" for metric in ("recall", "ndcg") for k in (5, 10)}
    if spec not in CPU_DEPENDENT_SIDS:
        check_fingerprint(spec, "generative", result)


@pytest.mark.parametrize("spec", RECBOLE_ROWS)
def test_a_recbole_row_trains_and_tests(fast_config, spec):
    row = Row.parse(spec)
    result = run_recbole_diffgm(row.model, "beauty-slice", row.config_files(None), {**fast_config, "epochs": 1})
    assert result["test_result"]["ndcg@10"] >= 0
    check_fingerprint(spec, "recbole", result)
