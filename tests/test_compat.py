"""Each fix in recbole_diffgm/compat.py and each version pin in setup.py, shown to be needed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from recbole_diffgm import load_data_and_model, run_recbole_diffgm
from recbole_diffgm.compat import (
    load_checkpoint,
    ray_worker_setup,
    restore_numpy_aliases,
)
from recbole_diffgm.config import Config
from recbole_diffgm.trainer import PluginTrainerMixin
from recbole_diffgm.utils import create_dataset, get_model, get_trainer


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, timeout=300)


def test_numpy_aliases_let_recbole_config_and_ray_tune_import():
    # A fresh interpreter: this one already has the aliases. Config() reads np.float_ (numpy 2 removed it)
    # and recbole.quick_start imports ray.tune, which reads np.bool8.
    done = run_python(
        """
        import recbole_diffgm
        from recbole.quick_start import run_recbole
        from recbole.config import Config
        config = Config(model="SASRec", dataset="ml-100k", config_dict={"train_neg_sample_args": None})
        print("config ok", config["model"])
        """
    )
    assert done.returncode == 0, done.stderr
    assert "config ok SASRec" in done.stdout


def test_numpy_aliases_only_add_missing_names(monkeypatch):
    assert np.float_ is np.float64 and np.bool8 is np.bool_
    sentinel = object()
    monkeypatch.setattr(np, "float_", sentinel)  # a name numpy (or the user) already defines is left alone
    restore_numpy_aliases()
    assert np.float_ is sentinel
    assert np.bool is np.bool_ and np.dtype(np.long) == np.dtype("long")  # numpy 2's own names, untouched


def test_best_checkpoint_is_reloaded_for_test(fast_config, monkeypatch):
    # The first of three validations scores best (the real validation runs; only its score is replaced), so the
    # test must use epoch 0's weights, not the last epoch's that the model holds when training ends.
    scripted = iter([0.3, 0.1, 0.2])
    real_valid_epoch = PluginTrainerMixin._valid_epoch

    def first_epoch_best(self, valid_data, show_progress=False):
        _, valid_result = real_valid_epoch(self, valid_data, show_progress)
        return next(scripted), valid_result

    monkeypatch.setattr(PluginTrainerMixin, "_valid_epoch", first_epoch_best)
    last_weights = {}
    real_fit = PluginTrainerMixin.fit

    def keep_last_weights(self, *args, **kwargs):
        result = real_fit(self, *args, **kwargs)
        last_weights.update({name: value.clone() for name, value in self.model.state_dict().items()})
        return result

    monkeypatch.setattr(PluginTrainerMixin, "fit", keep_last_weights)
    result = run_recbole_diffgm("SASRec", "beauty-slice", config_dict={**fast_config, "epochs": 3})
    checkpoint = load_checkpoint(result["model_file"])
    assert checkpoint["epoch"] == result["best_epoch"] == 0 and result["epochs_run"] == 3

    config, model, _, _, _, test_data = load_data_and_model(result["model_file"])
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    assert trainer.evaluate(test_data, load_best_model=False) == result["test_result"]  # epoch 0's weights
    model.load_state_dict(last_weights)
    assert trainer.evaluate(test_data, load_best_model=False) != result["test_result"]  # not the last epoch's
    # torch's safe default is still in force for every other load in the process.
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(result["model_file"])


def test_trainer_resumes_from_its_checkpoint(fast_config):
    result = run_recbole_diffgm("SASRec", "beauty-slice", config_dict=fast_config)
    config = Config("SASRec", "beauty-slice", config_dict=fast_config)
    dataset = create_dataset(config)
    model = get_model("SASRec")(config, dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "SASRec")(config, model)
    assert isinstance(trainer, PluginTrainerMixin)
    trainer.resume_checkpoint(result["model_file"])
    saved = load_checkpoint(result["model_file"])
    assert trainer.start_epoch == saved["epoch"] + 1
    assert trainer.best_valid_score == result["best_valid_score"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][name]), name


def test_ray_worker_setup_hook_restores_aliases_in_workers():
    import ray  # a dependency: a broken install fails here rather than skipping
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": ray_worker_setup})
    try:
        @ray.remote
        def import_tune():
            import numpy
            from ray import tune  # noqa: F401  (its TensorBoard logger reads np.bool8)
            return numpy.bool8 is numpy.bool_

        assert ray.get(import_tune.remote(), timeout=600)  # a worker importing Ray Tune on busy cores is slow
    finally:
        ray.shutdown()


def test_pandas_below_3_keeps_recbole_feature_loading(fast_config, tmp_path):
    # pandas 3 copy-on-write turns RecBole's fillna(inplace=True) into a no-op: empty token_seq cells
    # crash and missing floats are no longer imputed. setup.py pins pandas<3.
    folder = tmp_path / "gaps"
    folder.mkdir()
    (folder / "gaps.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        + "".join(f"u{u}\ti{(u + k) % 4}\t{k}\n" for u in range(6) for k in range(5))
    )
    (folder / "gaps.item").write_text(
        "item_id:token\ttitle:token_seq\tprice:float\n" "i0\tred lipstick\t2.0\n" "i1\t\t4.0\n" "i2\tblue\t\n" "i3\tgreen gel\t6.0\n"
    )
    config = Config("SASRec", "gaps", config_dict={**fast_config, "data_path": str(tmp_path)})
    dataset = create_dataset(config)
    dataset.build()  # converts the features to tensors
    features = dataset.get_item_feature()
    titles, prices = features["title"], features["price"]
    i1, i2 = dataset.token2id("item_id", ["i1", "i2"])
    assert titles[i1].eq(0).all()  # empty cell -> padding tokens
    assert prices[i2].item() == pytest.approx(4.0)  # NaN -> mean of 2, 4, 6


def test_setuptools_below_82_keeps_pkg_resources_for_ray():
    done = run_python("import ray; import pkg_resources; print('ok')")
    assert done.returncode == 0, done.stderr


def test_recbole_models_train_without_autograd_anomaly_detection(fast_config, monkeypatch):
    # RecBole's sine.py turns anomaly detection on for the whole process when any of its sequential models is
    # imported (SASRec here): a debugging mode that made every RecBole row's training step 1.7x slower.
    from recbole.model.sequential_recommender.sasrec import SASRec

    modes = []
    loss = SASRec.calculate_loss
    monkeypatch.setattr(SASRec, "calculate_loss",
                        lambda self, interaction: modes.append(torch.is_anomaly_enabled()) or loss(self, interaction))
    run_recbole_diffgm("SASRec", "beauty-slice", config_dict={**fast_config, "epochs": 1})
    assert modes and not any(modes)
    fresh = subprocess.run([sys.executable, "-c", "import recbole_diffgm, torch; from recbole_diffgm import get_model; "
                            "get_model('SINE'); print(torch.is_anomaly_enabled())"], capture_output=True, text=True)
    assert fresh.stdout.strip() == "False", fresh.stderr[-2000:]
