"""Scaling out with Ray: a search over two Ray nodes (``ray start`` on the loopback, each its own processes and
CPU) that loses its worker node mid-trial, and a search whose driver is killed and which the same call resumes.
Every process a test starts is killed when it ends."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import NAME

from recbole_diffgm.compat import load_checkpoint
from recbole_diffgm.tuning import ATTEMPTS_FILE, run_search

# The worker node on a loopback address of its own, so trials.md tells the nodes apart by address. The head keeps
# Ray's default, this machine's address: Ray rewrites a bootstrap address of 127.0.0.1 to it.
WORKER_IP = "127.0.0.2"
SEARCH = "learning_rate uniform 0.001,0.01\n"


def trial_settings(tiny_config) -> dict:
    # Trials long enough (60 short epochs: seconds each, since RecBole's models train without anomaly detection) to
    # be killed in the middle, with few validations: each is a round trip to the driver (Ray Tune's report).
    return {**tiny_config, "epochs": 60, "eval_step": 20, "stopping_step": 100, "hidden_size": 16,
            "embedding_size": 16}


def ray_start(*args: str, log: Path) -> subprocess.Popen:
    """``ray start ... --block`` in its own session: the node's processes are its children, killed with it."""
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1",
                                 "--disable-usage-stats", *args], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def kill_session(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def attempts(folder: Path) -> dict[str, list[dict]]:
    """Each trial folder's attempts (``tuning.ATTEMPTS_FILE``), by trial. Read while trials run, so only whole lines:
    a file just created, or a line still being written, is read at the next look (once, an empty file killed the
    watcher thread below with an IndexError and the test never killed the node)."""
    found = {}
    for path in folder.glob(f"*/{ATTEMPTS_FILE}"):
        lines = path.read_text().split("\n")[:-1]  # the part after the last newline is not a whole line yet
        if lines:
            found[path.parent.name] = [json.loads(line) for line in lines]
    return found


def resumable_epoch(trial_dir: Path) -> int:
    """The epoch a trial would resume at now (0: not yet)."""
    files = list(trial_dir.glob("checkpoints/*-resume.pth"))
    try:
        return load_checkpoint(files[0])["epoch"] + 1 if files else 0
    except Exception:  # noqa: BLE001  (replaced between the glob and the load)
        return 0


def read_trials(folder: Path) -> list[dict]:
    with (folder / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def wait_started(process: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.fixture
def two_node_cluster(tmp_path):
    """A head and a worker node, each with one CPU: ``(address, worker process)``. Both run without token
    authentication, as the driver does (``RAY_AUTH_MODE`` in conftest), whatever the home folder holds."""
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    port = 6400 + os.getpid() % 500
    # Ray's sockets live in its temp dir, and a socket's path has at most 107 bytes: a short one of this test's.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head = ray_start("--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp_dir}",
                     log=tmp_path / "head.log")
    # A worker node writes the cluster's address to Ray's default temp dir, where a later ray.init() would look for
    # a cluster: put back what was there.
    address_file = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    address_before = address_file.read_text() if address_file.is_file() else None
    worker = None
    try:
        wait_started(head, tmp_path / "head.log")
        worker = ray_start(f"--address=127.0.0.1:{port}", f"--node-ip-address={WORKER_IP}", log=tmp_path / "worker.log")
        wait_started(worker, tmp_path / "worker.log")
        yield f"127.0.0.1:{port}", worker
    finally:
        for process in (worker, head):
            if process is not None:
                kill_session(process)
        shutil.rmtree(temp_dir, ignore_errors=True)
        if address_before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(address_before)


def test_a_search_over_two_nodes_retries_the_trial_of_a_killed_worker_node(tiny_config, tmp_path, two_node_cluster):
    address, worker = two_node_cluster
    folder = tmp_path / "tune" / "two-nodes"
    killed = {}

    def kill_the_worker_node_mid_trial() -> None:
        """Once a trial has finished on the worker node and another is past its first epoch there: SIGKILL the
        worker's raylet."""
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not killed:
            on_worker = [trial for trial, tries in attempts(folder).items() if tries[-1]["ip"] == WORKER_IP]
            finished = [trial for trial in on_worker if (folder / trial / "checkpoints").is_dir()
                        and not list((folder / trial).glob("checkpoints/*-resume.pth"))
                        and list((folder / trial).glob("checkpoints/*.pth"))]
            running = [trial for trial in on_worker if resumable_epoch(folder / trial) >= 2]
            if finished and running:
                raylet = next(child for child in psutil.Process(worker.pid).children(recursive=True)
                              if child.name() == "raylet")
                raylet.send_signal(signal.SIGKILL)
                killed.update(trial=running[0], epoch=resumable_epoch(folder / running[0]))
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_the_worker_node_mid_trial, daemon=True)
    watcher.start()
    # 6 trials on the two one-CPU nodes: the worker, slower to start its trials, runs at least two of them (with 4,
    # the head node took 3 in some runs, and the worker never finished one before another ran there).
    summary = run_search("GRU4Rec", NAME, str(write_space(tmp_path)), config_dict=trial_settings(tiny_config),
                         num_samples=6, tune_dir=str(tmp_path / "tune"), name="two-nodes", ray_address=address,
                         early_stopping=False, max_failures=2)
    watcher.join(timeout=1)
    assert killed, "the worker node was never killed mid-trial"

    trials = read_trials(folder)
    assert len(trials) == 6 and len({trial["trial"] for trial in trials}) == 6  # none lost, none counted twice
    assert all(trial["status"] == "finished" and trial["best_valid_score"] for trial in trials)
    by_trial = attempts(folder)
    (head_ip,) = {tries[0]["ip"] for tries in by_trial.values()} - {WORKER_IP}  # spread over both nodes
    retried = [trial for trial in trials if trial["attempts"] != "1"]
    assert [trial["trial"] for trial in retried] == [killed["trial"]] and retried[0]["attempts"] == "2"
    first, second = by_trial[killed["trial"]]
    assert first["ip"] == WORKER_IP and second["ip"] == head_ip  # retried on the node still alive ...
    assert second["resumed_at_epoch"] >= killed["epoch"] >= 2  # ... from its last epoch, not from scratch
    assert f"{WORKER_IP}/" in retried[0]["ran on"] and "resumed at epoch" in retried[0]["ran on"]
    report = (folder / "trials.md").read_text()
    assert "Retried" in report and killed["trial"] in report and f"| {WORKER_IP} |" in report  # both nodes listed
    assert summary["trials"] == 6 and summary["failed"] == 0 and summary["test_result"]


def write_space(tmp_path: Path) -> Path:
    path = tmp_path / "space.test"
    path.write_text(SEARCH)
    return path


def test_a_search_whose_driver_was_killed_resumes_with_the_same_call(tiny_config, tmp_path):
    settings = trial_settings(tiny_config)
    folder = tmp_path / "tune" / "driver"
    script = ("import json, sys\nfrom recbole_diffgm.tuning import run_search\n"
              f"run_search('GRU4Rec', {NAME!r}, {str(write_space(tmp_path))!r}, config_dict=json.loads(sys.argv[1]), "
              f"num_samples=2, tune_dir={str(tmp_path / 'tune')!r}, name='driver', early_stopping=False, "
              "max_concurrent_trials=1)")
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen([sys.executable, "-c", script, json.dumps(settings)], cwd=tmp_path,
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    running = []
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and time.monotonic() < deadline and not running:
            if list(folder.glob("experiment_state*.json")):  # the driver has saved the search's state
                running = [trial for trial in attempts(folder) if resumable_epoch(folder / trial) >= 2]
            time.sleep(0.02)
    finally:
        kill_session(driver)  # the driver, and the local Ray it started
    assert driver.returncode == -signal.SIGKILL, (tmp_path / "driver.log").read_text()[-3000:]
    (interrupted,) = running
    assert len(attempts(folder)) == 1  # max_concurrent_trials: the second trial waits, though a CPU is free

    summary = run_search("GRU4Rec", NAME, str(write_space(tmp_path)), config_dict=settings, num_samples=2,
                         tune_dir=str(tmp_path / "tune"), name="driver", early_stopping=False,
                         max_concurrent_trials=1)
    trials = read_trials(folder)
    assert len(trials) == 2 and all(trial["status"] == "finished" for trial in trials)
    assert summary["trials"] == 2 and summary["failed"] == 0
    tries = attempts(folder)[interrupted]
    assert len(tries) == 2 and tries[1]["resumed_at_epoch"] >= 2  # the trial cut short went on from its epoch
