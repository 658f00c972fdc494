"""benchmarks/gpu_paper.py, the one-call GPU reproduction, run small on the CPU so that it is ready for a GPU: a slice
of Amazon Beauty, a tiny DiffGM and a budget of seconds go through every phase; amazon-beauty's shipped SIDs load
with faiss and the text model unimportable; the validation plan on numbers worked by hand."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from recbole_diffgm.config import DATASET_DIR

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
FAST_MODES = ["CPD, beam 32", "CPD, beam 32, 2 passes", "one pass", "one pass + CPD re-rank of top 64"]
TINY = ["n_embd=32", "n_inner=64", "n_head=2", "decoder_n_layer=2", "test_beam_size=24", "valid_beam_size=16",
        "codebook_size=16", "sent_emb_pca=32", "opq_iterations=5", "train_batch_size=128"]


@pytest.fixture
def gpu_paper(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_paper

    return gpu_paper


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[dict, Path]:
    """The script's main on the CPU: 40 users, a tiny model, 3 s of training; its metrics and output folder. Where an
    earlier test of this process imported Ray, all of it is made unimportable for the run (an import then fails)."""
    root = tmp_path_factory.mktemp("gpu-paper")
    out = root / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # RecBole writes log/ and log_tensorboard/ into the working directory
        patch.syspath_prepend(str(BENCHMARKS))
        for name in [name for name in sys.modules if name == "ray" or name.startswith("ray.")]:
            patch.setitem(sys.modules, name, None)  # an earlier test's Ray, unimportable here and not counted
        import gpu_paper

        gpu_paper.main(["--device=cpu", "--users=40", "--budget=3s", f"--out={out}", f"--work={root / 'work'}",
                        *(f"--set={setting}" for setting in TINY), "--decode_users=16", "--decode_batch=8",
                        "--check_users=8", "--speed_steps=2", "--compile_backend=eager"])
    return json.loads((out / "metrics.json").read_text()), out


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_the_output_folder_holds_what_the_device_tool_brings_back(dry_run):
    _, out = dry_run
    files = sorted(path.name for path in out.iterdir())
    assert files == sorted(["metrics.json", "report.md", "run.log", "curve.csv", "command.txt"])
    assert all(path.stat().st_size < 16 * 2**20 for path in out.iterdir())  # at most 8 files of 16 MiB come back
    log = (out / "run.log").read_text()
    assert "training stopped by the time budget" in log and "gpu_paper: precision" in log


def test_the_budgeted_run_is_tested_at_both_levels_in_every_mode(dry_run):
    metrics, out = dry_run
    run = metrics["run"]
    assert run["stop_reason"] == "time budget" and run["epochs_run"] >= 1
    with (out / "curve.csv").open() as handle:
        assert [int(row["epoch"]) for row in csv.DictReader(handle)] == [point["epoch"] for point in run["curve"]]
    modes = ["CPD, beam 24", *FAST_MODES]
    assert list(metrics["test"]) == ["item", "sid"]
    for level, prefix in (("item", ""), ("sid", "sid_")):
        assert list(metrics["test"][level]) == modes
        for label in modes:
            scores = [metrics["test"][level][label][f"{prefix}{m}@{k}"] for m in ("recall", "ndcg") for k in (5, 10)]
            assert all(finite(score) and 0 <= score <= 1 for score in scores), (level, label, scores)
    # The item-level CPD row is the run's own test; the SID level is another evaluation of the same checkpoint.
    assert metrics["test"]["item"]["CPD, beam 24"]["ndcg@10"] == pytest.approx(run["test_result"]["ndcg@10"])
    report = (out / "report.md").read_text()
    assert "| DiffGRM paper (full recipe, CPD beam 256) | SID | .0603 | .0414 | .0876 | .0502 |  |" in report
    sid = metrics["test"]["sid"]["CPD, beam 24"]
    printed = " | ".join(f"{sid[f'sid_{m}']:.4f}".removeprefix("0") for m in ("recall@5", "ndcg@5", "recall@10",
                                                                           "ndcg@10"))
    assert f"| CPD, beam 24 | SID | {printed} |" in report


def test_speed_is_measured_against_the_flop_floor_and_plans_the_validations(dry_run):
    metrics, _ = dry_run
    speed = metrics["speed"]
    assert speed["sid_source"] == "built"  # a slice: its SIDs were built here, with faiss
    train = speed["train"]
    assert train["rows_per_s"] > 0 and train["flops_per_row"] > 0 and finite(train["over_floor"])
    decodes = [speed["decode_beam_24"], speed["decode_beam_16"], *metrics["modes"].values()]
    assert list(metrics["modes"]) == ["CPD, beam 24", *FAST_MODES]
    assert all(row["ms_per_user"] > 0 and row["gflops"] > 0 and finite(row["over_floor"]) for row in decodes)
    # One pass reads the all-masked pass once; CPD with 4 passes does more work per user.
    assert metrics["modes"]["one pass"]["gflops"] < metrics["modes"]["CPD, beam 32"]["gflops"]
    plan = metrics["plan"]
    assert plan["recipe"] == {"eval_start_epoch": 20, "eval_step": 1}  # DiffGM.yaml's, left to the plan
    assert plan["overrides"]["eval_start_epoch"] <= plan["epochs_that_fit"] / 2 < 20


def test_bf16_and_compile_are_checked_against_fp32(dry_run):
    metrics, _ = dry_run
    check = metrics["precision"]
    assert check["users"] == 8 and check["beam"] == 24
    bf16, compiled = check["bf16"], check["compile"]
    assert all(finite(row[key]) for row in (bf16, compiled) for key in
               ("loss", "loss_rel_diff", "score_max_abs_diff", "score_max_rel_diff", "top10_overlap"))
    assert 0 < bf16["score_max_abs_diff"] and bf16["loss_rel_diff"] < 0.05  # bf16 autocast took effect, and is close
    assert compiled["compiled_modules"] == 2 and compiled["backend"] == "eager"  # the two decoder blocks
    assert compiled["score_max_abs_diff"] < 1e-4 and compiled["top10_identical"] == 1.0


def test_nothing_on_the_way_imports_ray_and_the_imports_are_listed(dry_run):
    metrics, _ = dry_run
    assert metrics["env"]["ray_imported"] is False
    imported = metrics["env"]["imported"]
    assert {"recbole", "torch", "colorlog", "texttable", "thop", "faiss-cpu"} <= set(imported)  # faiss: the slice
    assert "ray" not in imported


def test_amazon_beauty_takes_its_shipped_sids_without_faiss_or_the_text_model(tmp_path):
    script = f"""
import json, sys
sys.modules["faiss"] = sys.modules["sentence_transformers"] = sys.modules["ray"] = None  # not installed
sys.path.insert(0, {str(BENCHMARKS)!r})
import gpu_paper
_, dataset, *_ = gpu_paper.build("amazon-beauty", [], {{"checkpoint_dir": sys.argv[1], "use_gpu": False}})
print(json.dumps([type(sys.modules["faiss"]).__name__, list(dataset.item_sid.shape), dataset.sid_source]))
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "saved")], cwd=tmp_path, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    placeholder, shape, source = json.loads(done.stdout.splitlines()[-1])
    assert placeholder == "MissingModule" and shape == [12102, 4]  # 12,101 items and the padding row, 4 digits
    shipped = Path(source)  # the file beside the atomic files, not a build or a cache
    assert shipped.parent == DATASET_DIR / "amazon-beauty" and shipped.name.startswith("amazon-beauty.sids-opq-")


def test_the_plan_moves_the_first_validation_into_the_budget_and_spaces_the_rest(gpu_paper):
    sizes = {"epochs": 100, "eval_start_epoch": 20, "eval_step": 1}
    # 8 minutes at 10 s per epoch: 48 epochs fit, the recipe's start (20) is before half of them; 28 validations of
    # 5 s would take 140 s, more than a quarter of the budget (120 s), so every second epoch is validated.
    plan = gpu_paper.plan_validation(480, 10, 5, sizes, set(), 0.25)
    assert plan["overrides"] == {"eval_start_epoch": 20, "eval_step": 2}
    # 30 s per epoch: 16 fit, the first validation moves to epoch 8; 8 validations of 5 s fit in the quarter.
    assert gpu_paper.plan_validation(480, 30, 5, sizes, set(), 0.25)["overrides"] == {"eval_start_epoch": 8,
                                                                                        "eval_step": 1}
    # Epochs that fit beyond the recipe's 100 do not count; keys given with --set are kept as given.
    assert gpu_paper.plan_validation(480, 1, 1, sizes, set(), 0.25)["overrides"] == {"eval_start_epoch": 20,
                                                                                       "eval_step": 1}
    assert gpu_paper.plan_validation(480, 30, 5, sizes, {"eval_start_epoch"}, 0.25)["overrides"] == {"eval_step": 1}
    # A budget shorter than an epoch: validate after the first one, however long validation takes (the budget stops
    # training only after a validation); 40 s validations would otherwise ask for every 4th epoch.
    assert gpu_paper.plan_validation(60, 90, 40, sizes, set(), 0.25)["overrides"] == {"eval_start_epoch": 0,
                                                                                       "eval_step": 1}
    # 24 epochs fit, the first validation moves to epoch 12; 200 s validations would ask for every 20th epoch: capped
    # at the 12 epochs from there to the last that fits, so that a validation comes by epoch 23 (RecBole validates
    # epoch e when (e + 1) % eval_step == 0).
    assert gpu_paper.plan_validation(480, 20, 200, sizes, set(), 0.25)["overrides"] == {"eval_start_epoch": 12,
                                                                                         "eval_step": 12}
