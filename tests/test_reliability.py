"""Reproducibility and resuming: the same seed gives the same run, a killed run continues to the same end, and a
file is replaced whole or not at all."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import NAME

from recbole_diffgm import run_recbole_diffgm
from recbole_diffgm.compat import load_checkpoint
from recbole_diffgm.errors import InputError
from recbole_diffgm.files import replaced_atomically, write_csv_atomically, write_json_atomically
from recbole_diffgm.trainer import resume_file_of


def run_config(tiny_config, tmp_path, name: str) -> dict:
    return {**tiny_config, "checkpoint_dir": str(tmp_path / name), "epochs": 6, "eval_step": 1, "stopping_step": 10,
            "warmup_steps": 4, "learning_rate": 0.01}


def weights(model_file) -> dict[str, torch.Tensor]:
    return load_checkpoint(model_file)["state_dict"]


def test_the_same_seed_gives_the_same_run(tiny_config, tmp_path):
    first = run_recbole_diffgm("DiffGM", NAME, config_dict=run_config(tiny_config, tmp_path, "first"))
    second = run_recbole_diffgm("DiffGM", NAME, config_dict=run_config(tiny_config, tmp_path, "second"))
    assert first["test_result"] == second["test_result"] and first["best_valid_result"] == second["best_valid_result"]
    assert any(value > 0 for value in first["test_result"].values())
    for name, tensor in weights(first["model_file"]).items():
        assert torch.equal(tensor, weights(second["model_file"])[name]), name
    assert not resume_file_of(first["model_file"]).exists()  # a finished run leaves nothing to resume


def test_a_killed_run_resumes_to_the_same_end(tiny_config, tmp_path, caplog):
    uninterrupted = run_recbole_diffgm("DiffGM", NAME, config_dict=run_config(tiny_config, tmp_path, "whole"))

    config = run_config(tiny_config, tmp_path, "killed")
    script = ("import json, sys\nfrom recbole_diffgm import run_recbole_diffgm\n"
              f"run_recbole_diffgm('DiffGM', {NAME!r}, config_dict=json.loads(sys.argv[1]))")
    process = subprocess.Popen([sys.executable, "-c", script, json.dumps(config)], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list((tmp_path / "killed").glob("*-resume.pth")):  # an epoch has finished
            process.kill()
            break
        time.sleep(0.005)
    assert process.wait() == -9, "the run finished before it could be killed"
    assert not list((tmp_path / "killed").glob(".*"))  # no partial file was left to be loaded

    (resume_file,) = (tmp_path / "killed").glob("*-resume.pth")
    resumed_from = load_checkpoint(resume_file)["epoch"] + 1
    (tmp_path / "data").rename(tmp_path / "moved")  # resumed in another checkout: the data is elsewhere now
    with caplog.at_level("INFO"):
        resumed = run_recbole_diffgm(config_dict={"data_path": str(tmp_path / "moved")}, resume_file=str(resume_file))
    assert f"Resume training from epoch {resumed_from}" in caplog.text and 1 <= resumed_from < config["epochs"]
    assert f"saved run: data_path {tmp_path / 'moved' / NAME}" in caplog.text
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert resumed["best_valid_result"] == uninterrupted["best_valid_result"]
    for name, tensor in weights(uninterrupted["model_file"]).items():
        assert torch.equal(tensor, weights(resumed["model_file"])[name]), name
    assert not resume_file.exists()


def test_a_run_killed_while_testing_resumes_to_its_test_without_training(tiny_config, tmp_path, monkeypatch):
    from recbole_diffgm.trainer import GenerativeTrainer

    uninterrupted = run_recbole_diffgm("DiffGM", NAME, config_dict=run_config(tiny_config, tmp_path, "whole"))

    class Killed(Exception):
        pass

    evaluate = GenerativeTrainer.evaluate

    def killed_at_the_test(self, eval_data, load_best_model=True, *args, **kwargs):
        if load_best_model:  # validation passes False; the test loads the best checkpoint
            raise Killed
        return evaluate(self, eval_data, load_best_model, *args, **kwargs)

    monkeypatch.setattr(GenerativeTrainer, "evaluate", killed_at_the_test)
    with pytest.raises(Killed):
        run_recbole_diffgm("DiffGM", NAME, config_dict=run_config(tiny_config, tmp_path, "killed"))
    monkeypatch.setattr(GenerativeTrainer, "evaluate", evaluate)
    (resume_file,) = (tmp_path / "killed").glob("*-resume.pth")
    assert load_checkpoint(resume_file)["training_done"]

    trained = []
    monkeypatch.setattr(GenerativeTrainer, "_train_epoch", lambda *args, **kwargs: trained.append(args[2]))
    resumed = run_recbole_diffgm(resume_file=str(resume_file))
    assert trained == []  # straight to the test
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert (resumed["epochs_run"], resumed["best_epoch"], resumed["stop_reason"]) == (
        uninterrupted["epochs_run"], uninterrupted["best_epoch"], uninterrupted["stop_reason"])
    assert [p["valid_score"] for p in resumed["curve"]] == [p["valid_score"] for p in uninterrupted["curve"]]
    assert not resume_file.exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_a_killed_two_process_ddp_run_resumes_to_the_same_end(tiny_config, tmp_path):
    uninterrupted = run_recbole_diffgm("DiffGM", NAME, config_dict=run_config(tiny_config, tmp_path, "whole"),
                                       nproc=2, port=free_port())

    config = run_config(tiny_config, tmp_path, "killed")
    script = ("import json, sys\nfrom recbole_diffgm import run_recbole_diffgm\n"
              f"run_recbole_diffgm('DiffGM', {NAME!r}, config_dict=json.loads(sys.argv[1]), nproc=2, port={free_port()})")
    with (tmp_path / "killed.log").open("w") as log:
        process = subprocess.Popen([sys.executable, "-c", script, json.dumps(config)], cwd=tmp_path,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if list((tmp_path / "killed").glob("*-resume.pth")):  # an epoch has finished on both ranks
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and its two ranks
            break
        time.sleep(0.005)
    assert process.wait() == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]

    (resume_file,) = (tmp_path / "killed").glob("*-resume.pth")
    state = load_checkpoint(resume_file)
    assert len(state["rng_by_rank"]) == 2 and 1 <= state["epoch"] + 1 < config["epochs"]
    assert not torch.equal(state["rng_by_rank"][0]["torch"], state["rng_by_rank"][1]["torch"])  # each rank its own
    with pytest.raises(InputError, match="a run of 2 process"):
        run_recbole_diffgm(resume_file=str(resume_file), nproc=3)
    resumed = run_recbole_diffgm(resume_file=str(resume_file), port=free_port())  # as many processes as it had
    assert resumed["test_result"] == uninterrupted["test_result"]
    assert resumed["best_valid_result"] == uninterrupted["best_valid_result"]
    assert resumed["epochs_run"] == uninterrupted["epochs_run"]
    for name, tensor in weights(uninterrupted["model_file"]).items():
        assert torch.equal(tensor, weights(resumed["model_file"])[name]), name
    assert not resume_file.exists()


def test_a_file_is_replaced_only_by_a_block_that_succeeds(tmp_path):
    """The block writes a hidden temporary file beside the target (``.<name>.<random>.partial``: what .gitignore
    ignores under results/); a failure leaves the old file as it was and no temporary file behind."""
    path = tmp_path / "run.json"
    write_json_atomically({"epoch": 1}, path)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with replaced_atomically(path) as partial:
            partial.write_text('{"epo')
            assert partial.parent == tmp_path and partial.name.startswith(".run.json.")
            assert partial.name.endswith(".partial")
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"epoch": 1}
    assert [file.name for file in tmp_path.iterdir()] == ["run.json"]

    with replaced_atomically(path) as partial:
        partial.write_text('{"epoch": 2}')
        assert json.loads(path.read_text()) == {"epoch": 1}  # a reader sees the old file until the block ends
    assert json.loads(path.read_text()) == {"epoch": 2}
    write_csv_atomically([{"epoch": 0}, {"epoch": 1, "ndcg@10": 0.5}], tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text().splitlines() == ["epoch,ndcg@10", "0,", "1,0.5"]
    assert sorted(file.name for file in tmp_path.iterdir()) == ["curve.csv", "run.json"]


def test_a_missing_resume_file_is_named(tmp_path):
    with pytest.raises(InputError, match="resume file not found: nowhere-resume.pth"):
        run_recbole_diffgm(resume_file="nowhere-resume.pth")


def test_each_epoch_after_the_first_logs_the_time_left(tiny_config, tmp_path, caplog):
    with caplog.at_level("INFO"):
        run_recbole_diffgm("DiffGM", NAME, config_dict={**run_config(tiny_config, tmp_path, "clock"), "epochs": 3})
    lines = [line for line in caplog.text.splitlines() if "min per epoch so far" in line]
    assert len(lines) == 2 and "epoch 1/3:" in lines[0] and "epoch 2/3:" in lines[1]
    assert all("min left" in line and "less if early stopping ends it" in line for line in lines)
    assert "(2 epochs to the epoch cap)" in lines[0] and "(1 epoch to the epoch cap)" in lines[1]
