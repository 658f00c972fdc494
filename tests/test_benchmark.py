"""Benchmark mode: every row on one split, each run in its own process; a failed model keeps its row; finished
runs are reused and killed ones resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml
from conftest import NAME

from recbole_diffgm.benchmark import run_benchmark


def read_table(results):
    with (results / f"{NAME}.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_the_benchmark_writes_every_row_including_a_failed_one(tiny_config, tmp_path):
    settings = {**tiny_config, "epochs": 2, "stopping_step": 5, "topk": [5, 10], "hidden_size": 16,
                "embedding_size": 16}
    results = tmp_path / "results"
    rows = run_benchmark(["GRU4Rec", "NoSuchModel", "DiffGM", "DiffGM@sid-disambiguate"], NAME,
                         config_dict=settings, results_dir=str(results))
    assert [row["model"] for row in rows] == ["GRU4Rec", "NoSuchModel", "DiffGM", "DiffGM@sid-disambiguate"]
    gru, missing, diffgm, unique = rows
    assert not gru["error"] and not diffgm["error"] and not unique["error"] and "NoSuchModel" in missing["error"]
    assert "recall@5" in gru and "sid_recall@5" not in gru  # SID-level only for generative models
    assert {"recall@5", "sid_recall@5", "inference_ms_per_user", "parameters", "peak_memory_mb"} <= set(diffgm)
    table = read_table(results)
    assert [line["model"] for line in table] == ["GRU4Rec", "NoSuchModel", "DiffGM", "DiffGM@sid-disambiguate"]
    assert "NoSuchModel" in table[1]["error"] and table[1]["recall@5"] == "–"
    assert float(table[2]["recall@5"]) == round(diffgm["recall@5"], 4)
    # Each generative row states its SIDs; the recipe row runs with its own policy.
    assert table[0]["SIDs"] == "" and table[2]["SIDs"].startswith("opq 4×8, keep: ")
    assert table[3]["SIDs"].startswith("opq 4×8 +1, disambiguate: 0.0% items share a SID (")
    assert table[2]["epochs run"] == "2" and table[2]["stopped by"] == "epoch cap"
    markdown = (results / f"{NAME}.md").read_text()
    assert markdown.count("\n| ") == 5  # header + 4 rows
    assert "Every row: checkpoint selected on validation NDCG@5; at most 2 epochs, patience 5 validations." in markdown
    assert (results / f"{NAME}.png").stat().st_size > 0 and (results / f"{NAME}-curves.png").stat().st_size > 0
    with (results / f"{NAME}-curves" / "DiffGM.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["0", "1"]
    config = yaml.safe_load((results / f"{NAME}-configs" / "DiffGM.yaml").read_text())
    assert config["model"] == "DiffGM" and config["epochs"] == 2 and config["n_embd"] == 32
    assert yaml.safe_load((results / f"{NAME}-configs" / "DiffGM-sid-disambiguate.yaml").read_text())[
        "sid_collision"] == "disambiguate"


def test_a_finished_run_is_reused_until_its_config_changes(tiny_config, tmp_path):
    settings = {**tiny_config, "epochs": 1}
    results = str(tmp_path / "results")
    (first,) = run_benchmark(["DiffGM"], NAME, config_dict=settings, results_dir=results)
    (again,) = run_benchmark(["DiffGM"], NAME, config_dict=settings, results_dir=results)
    assert first["reused"] == 0 and again["reused"] == 1
    assert again["ndcg@5"] == first["ndcg@5"] and again["train_seconds"] == first["train_seconds"]
    assert read_table(tmp_path / "results")[0]["reused"] == "1"
    (not_run,) = run_benchmark(["DiffGM"], NAME, config_dict={**settings, "learning_rate": 0.001},
                               results_dir=results, report_only=True)
    assert not_run["error"].startswith("not run yet") and not_run["seeds"] == 0
    (changed,) = run_benchmark(["DiffGM"], NAME, config_dict={**settings, "learning_rate": 0.001},
                               results_dir=results)
    assert changed["reused"] == 0 and not changed["error"]


def test_a_benchmark_killed_mid_model_keeps_its_finished_rows_and_resumes_the_run(tiny_config, tmp_path):
    settings = {**tiny_config, "epochs": 6, "eval_step": 1, "stopping_step": 10}
    (whole,) = run_benchmark(["DiffGM"], NAME, config_dict=settings, results_dir=str(tmp_path / "whole"))

    script = ("import json, sys\nfrom recbole_diffgm.benchmark import run_benchmark\n"
              f"run_benchmark(['SASRec', 'DiffGM'], {NAME!r}, config_dict=json.loads(sys.argv[1]), results_dir='killed')")
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(settings)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = tmp_path / "killed" / f"{NAME}-runs"
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list((runs / "DiffGM").glob("*-resume.pth")):  # SASRec has finished, and an epoch of DiffGM
            run_process = psutil.Process(process.pid).children()[-1]
            process.kill()  # SIGKILL, the benchmark alone: its run's process must not live on, orphaned
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, "the benchmark finished before it could be killed"
    try:
        run_process.wait(timeout=10)
    except psutil.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the run's process outlived the benchmark that started it")
    assert (runs / "SASRec" / "run.json").is_file() and not (runs / "DiffGM" / "run.json").exists()
    assert [row["model"] for row in read_table(tmp_path / "killed")] == ["SASRec"]  # the finished row, kept

    sasrec, resumed = run_benchmark(["SASRec", "DiffGM"], NAME, config_dict=settings,
                                    results_dir=str(tmp_path / "killed"))
    assert sasrec["reused"] == 1 and resumed["reused"] == 0 and not resumed["error"]
    log = "".join(path.read_text() for path in (tmp_path / "log").rglob("*.log"))
    assert "Resume training from epoch" in log
    for metric in ("recall@5", "ndcg@5", "sid_recall@5", "epochs_run"):
        assert resumed[metric] == whole[metric], metric
    assert [point["ndcg@5"] for point in resumed["curves"][0]] == [point["ndcg@5"] for point in whole["curves"][0]]


def test_a_run_stopped_after_its_test_is_not_trained_again(tiny_config, tmp_path, monkeypatch):
    # The resume state is discarded once the item-level test is done; the SID-level test that follows is as
    # long as it, and a benchmark stopped there must go on from the tested run, not from scratch.
    import recbole_diffgm.quick_start as quick_start
    from recbole_diffgm.benchmark import _reuse_or_run

    run_dir, settings = tmp_path / "runs" / "DiffGM", {**tiny_config, "epochs": 2}
    real_evaluate = quick_start.evaluate_saved_model

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quick_start, "evaluate_saved_model", stopped)
    with pytest.raises(KeyboardInterrupt):
        _reuse_or_run("DiffGM", NAME, None, settings, run_dir)
    assert (run_dir / "tested.json").is_file() and not (run_dir / "run.json").exists()
    assert not list(run_dir.glob("*-resume.pth"))
    trained = json.loads((run_dir / "tested.json").read_text())["result"]

    def retrained(*args, **kwargs):
        raise AssertionError("a tested run was trained again")

    monkeypatch.setattr(quick_start, "evaluate_saved_model", real_evaluate)
    monkeypatch.setattr(quick_start, "run_recbole_diffgm", retrained)
    result = _reuse_or_run("DiffGM", NAME, None, settings, run_dir)
    assert result["test_result"] == trained["test_result"] and result["sid_test_result"]
    assert (run_dir / "run.json").is_file() and not (run_dir / "tested.json").exists()
    assert _reuse_or_run("DiffGM", NAME, None, settings, run_dir)["reused"]


def test_a_row_with_a_sid_per_item_takes_its_sid_level_figures_from_its_item_level_test(tiny_config, tmp_path,
                                                                                         monkeypatch):
    # Decoding the test split again would give the same figures (tests/test_sid_level.py), at the test's cost.
    import recbole_diffgm.quick_start as quick_start
    from recbole_diffgm.benchmark import _reuse_or_run

    def decoded_again(*args, **kwargs):
        raise AssertionError("the SID-level test was decoded again")

    monkeypatch.setattr(quick_start, "evaluate_saved_model", decoded_again)
    settings = {**tiny_config, "epochs": 1, "sid_collision": "reassign"}
    result = _reuse_or_run("DiffGM", NAME, None, settings, tmp_path / "runs" / "DiffGM")
    assert result["sids"]["shared"] == 0
    assert result["sid_test_result"] == {f"sid_{metric}": value for metric, value in result["test_result"].items()}


def test_a_run_process_dies_with_its_benchmark_at_once_not_at_its_next_poll(tmp_path):
    # The polling fallback is set to an hour: only the kernel's parent-death signal can end the run in time.
    run = ("import os, time\nfrom recbole_diffgm.benchmark import _exit_with\n"
           "_exit_with(os.getppid(), period_s=3600)\nprint('ready', flush=True)\ntime.sleep(3600)")
    benchmark = (f"import subprocess, sys\nrun = subprocess.Popen([sys.executable, '-c', {run!r}], stdout=subprocess.PIPE)\n"
                 "print(run.pid, run.stdout.readline().decode().strip(), flush=True)\nrun.wait()")
    process = subprocess.Popen([sys.executable, "-c", benchmark], stdout=subprocess.PIPE, cwd=tmp_path,
                               start_new_session=True)
    pid, state = process.stdout.readline().decode().split()
    assert state == "ready"
    run_process = psutil.Process(int(pid))
    process.kill()
    process.wait()
    try:
        run_process.wait(timeout=10)
    except psutil.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the run's process outlived its benchmark")


def test_a_row_names_a_model_and_recipes_that_come_before_the_shared_files():
    from recbole_diffgm.benchmark import Row
    from recbole_diffgm.config import PROPERTIES_DIR
    from recbole_diffgm.errors import InputError

    row = Row.parse("DiffGM@DiffGM-cpu+sid-disambiguate")
    recipes = PROPERTIES_DIR / "recipes"
    assert row.model == "DiffGM" and row.file_name == "DiffGM-DiffGM-cpu-sid-disambiguate"
    assert row.config_files(["budget.yaml"]) == [str(recipes / "DiffGM-cpu.yaml"),
                                                 str(recipes / "sid-disambiguate.yaml"), "budget.yaml"]
    assert Row.parse("SASRec").config_files(None) is None
    with pytest.raises(InputError, match="recipe 'nope' is neither a yaml file nor one of properties/recipes: ") as error:
        Row.parse("SASRec@nope")
    available = str(error.value).split(": ", 1)[1].split(", ")
    assert available == sorted(path.stem for path in recipes.glob("*.yaml")) and "SASRec-strong" in available
