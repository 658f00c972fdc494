"""run_recbole_diffgm.py as a user runs it."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import textwrap

import pytest
import yaml
from conftest import NAME, SCRIPT, read_atomic


def run_cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model=SASRek"], "error: unknown model 'SASRek'; available models: "),
        (["--model=sasrec"], "error: unknown model 'sasrec'; available models: "),
        (["--dataset=amazon-beuty"], "error: unknown dataset 'amazon-beuty': no file "),
        (["--config_files=nowhere.yaml"], "error: config file not found: nowhere.yaml"),
    ],
)
def test_bad_names_give_one_line(args, message, tmp_path):
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "saved").exists()


def test_unknown_names_list_the_available_ones(tmp_path):
    models = run_cli("--model=SASRek", cwd=tmp_path).stderr
    assert all(f" {name}," in models for name in ("BERT4Rec", "GRU4Rec", "SASRec"))
    datasets = run_cli("--dataset=amazon-beuty", cwd=tmp_path).stderr
    assert "available in " in datasets and ": amazon-beauty;" in datasets
    assert "amazon-sports-outdoors, amazon-toys-games, amazon-cds-vinyl" in datasets


def test_an_override_without_a_value_is_refused(tmp_path):
    done = run_cli("--epochs", "3", cwd=tmp_path)
    assert done.returncode == 2 and "argument '--epochs' is not of the form --key=value" in done.stderr


def test_config_files_and_overrides_in_recbole_priority(fast_config, slice_root, tmp_path):
    # The file sets epochs 3 and the embedding size; the command line overrides epochs.
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({**fast_config, "state": "INFO", "epochs": 3, "hidden_size": 8}))
    done = run_cli("--model=SASRec", "--dataset=beauty-slice", f"--config_files={config_file}", "--epochs=1",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "epoch 0 training" in log and "epoch 1 training" not in log
    assert "hidden_size = 8" in log
    assert "beauty-slice: 300 users, " in log
    assert "test result" in log and "ndcg@10" in log
    assert list((tmp_path / "saved").glob("SASRec-*.pth"))


def test_training_runs_without_ray_and_the_search_modes_say_what_to_install(tiny_config, tmp_path):
    # Ray made unimportable (as when it is not installed): a run, its benchmark table and a recommendation work;
    # the search modes stop with one line.
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["ray"] = None  # import ray now raises ImportError
        from recbole_diffgm import Recommender, run_recbole_diffgm
        from recbole_diffgm.benchmark import run_benchmark
        from recbole_diffgm.cli import main
        settings = json.loads(sys.argv[1])
        result = run_recbole_diffgm("DiffGM", "{NAME}", config_dict={{**settings, "epochs": 1}})
        run_benchmark(["DiffGM"], "{NAME}", config_dict={{**settings, "epochs": 1}}, results_dir="results")
        assert len(Recommender(result["model_file"]).recommend([sys.argv[2]], top_k=3)) == 3
        print("trained", flush=True)
        sys.exit(main(["--model=GRU4Rec", "--dataset={NAME}", "--params_file=hyper.test",
                       "--data_path=" + settings["data_path"]]))
    """)
    item = read_atomic(tmp_path / "data" / NAME / f"{NAME}.item")["item_id:token"][5]
    done = subprocess.run([sys.executable, "-c", script, json.dumps(tiny_config), item], cwd=tmp_path, check=False,
                          capture_output=True, text=True, timeout=600)
    assert "trained" in done.stdout, done.stderr
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: the search modes (--params_file, --tune_budget) need Ray Tune, which cannot be imported here")


def test_a_benchmark_table_opens_with_its_command_quoted_as_a_shell_reads_it(fast_config, slice_root, tmp_path):
    # Two config files in one argument (RecBole's --config_files="a.yaml b.yaml"): the command at the table's top
    # must give the shell that same one argument back.
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(yaml.safe_dump(fast_config))
    second.write_text(yaml.safe_dump({"epochs": 1}))
    args = ["--model=SASRec", "--dataset=beauty-slice", f"--config_files={first} {second}",
            f"--results_dir={tmp_path / 'results'}", "--seeds=1"]
    done = run_cli(*args, "--report_only", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "results" / "beauty-slice.md").read_text().splitlines()
    command = table[table.index("```bash") + 1]
    assert shlex.split(command) == ["python", "run_recbole_diffgm.py", *args]
