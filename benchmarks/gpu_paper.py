"""DiffGRM's Beauty result in one call on a GPU: the paper's recipe trained to a wall budget, tested at both levels.

    PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu_paper.py --out=$OUT --budget=8m     # the GPU machine: cuda
    OMP_NUM_THREADS=1 python benchmarks/gpu_paper.py --device=cpu --users=300 --budget=20s --out=/tmp/gpu-paper \\
        --set n_embd=32 --set n_inner=64 --set n_head=2 --set decoder_n_layer=1 --set test_beam_size=32 \\
        --decode_users=64 --decode_batch=32 --check_users=16 --speed_steps=2 --compile_backend=eager   # CPU dry run

What it does, in order, each phase saved as soon as it ends (a run killed at its time limit keeps the phases before):
1. speed: the recipe's untrained network on ``--device``: training rows/s over ``--speed_steps`` AdamW steps, and
   decoding ms/user (CPD at the test and validation beams) with the FLOPs of each (``torch.utils.flop_counter``)
   against the floor, those FLOPs at the matrix-multiply rate measured here. The same figures plan the run: the
   first validation (``eval_start_epoch``, the paper's 20) comes before half the epochs that fit in the budget,
   and ``eval_step`` keeps validation within ``--valid_share`` of the budget (validation is not counted in it);
   a key given with ``--set`` is left as given.
2. train: ``run_recbole_diffgm`` with DiffGM's defaults (``properties/model/SIDTransformer.yaml`` + ``DiffGM.yaml``:
   the paper's Beauty recipe), ``time_budget: --budget`` on the wall clock, then the selected checkpoint's
   item-level test (CPD, ``test_beam_size`` 256).
3. test: the same checkpoint through ``evaluate_saved_model`` at the SID level (``eval_level: sid``, the DiffGRM
   release's protocol, beside the paper's .0603 / .0414 / .0876 / .0502) with CPD at ``test_beam_size``, and both
   levels in the fast decoding modes (``benchmarks/speed.py``'s: CPD beam 32, 2 passes, one pass, re-rank).
4. modes: decode ms/user of each mode on the trained checkpoint, against its FLOP floor.
5. precision: ``mixed_precision: bf16`` and ``compile: true`` against fp32 on one training batch (loss) and one
   batch of ``--check_users`` test users (beam scores, top-10 SIDs), each loaded from the checkpoint as a user does.

``--out`` receives five files, within what the GPU tool brings back (8 files, 16 MiB each): ``metrics.json``
(everything), ``report.md`` (the tables), ``run.log`` (RecBole's log of every phase), ``curve.csv`` (the learning
curve) and ``command.txt``. Checkpoints, caches and RecBole's own log/ stay in ``--work``.

Needs no network and installs nothing. Beyond a stock PyTorch GPU image with sentence-transformers (Python 3.12,
torch 2.11, no network, no Ray), carry these wheels (the device tool's README: ``pip download --no-deps
--only-binary=:all: --python-version 3.12 ... -d .whl colorlog==4.7.2 texttable==1.7.2 thop==0.1.1.post2209072238``
here; there ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl
vendor/recbole-1.2.1+rayuncapped-py3-none-any.whl`` and ``PYTHONPATH=/tmp/site:$PWD``), 2.2 MB in all:
- recbole 1.2.1: ``vendor/recbole-1.2.1+rayuncapped-py3-none-any.whl`` (in this repository, 2.1 MB), ``--no-deps``:
  its Ray requirement is for tuning alone, and nothing on this script's path imports Ray (``metrics.json`` says so);
- what RecBole imports on the training path and such an image lacks: colorlog 4.7.2 (its logger, 10 kB), texttable
  1.7.2 (the environment table, 11 kB), thop 0.1.1.post2209072238 (``get_flops``, 15 kB; on Python 3.12 its
  ``distutils`` import is setuptools' shim, which such an image has);
- only if the image's pandas is 3 (the script then stops at once and says so): pandas 2.3.3 (cp312 manylinux, 12.4 MB)
  with pytz (0.5 MB) and tzdata (0.3 MB); RecBole's atomic-file loading breaks under pandas 3 (docs/compat.md).
Imported on the way and already in such an image: numpy, scipy, scikit-learn, pandas, pyyaml, tqdm, colorama,
tabulate, psutil, setuptools, tensorboard (RecBole's ``SummaryWriter``); ``metrics.json`` lists every distribution
this process imported (boto3, wcwidth and a few more only where installed: optional imports). Not needed: Ray; faiss
and the text model, since amazon-beauty's default SIDs ship in ``dataset/`` (a ``--users`` slice builds its own, with
both, on the CPU). ``recbole_diffgm.data.sid.quantizers`` imports faiss when it is imported, although a run on
shipped SIDs never calls it: where faiss is missing, a placeholder stands in for it and fails loudly at a first use.

The device tool runs one command for 10 minutes at most, and validation and the tests come on top of the budget:
``--budget=8m`` needs that much training plus up to ``--valid_share`` of it validating, plus the phases after.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from logging import getLogger
from pathlib import Path

import numpy
import pandas
import torch
import yaml


class MissingModule(types.ModuleType):
    """Stands in for a module that is not installed and that this run imports but must never use."""

    def __getattr__(self, name: str):
        if name.startswith("__"):  # introspection (inspect, pickle) must see an ordinary module
            raise AttributeError(name)
        raise ImportError(f"{self.__name__}.{name}: {self.__name__} is not installed; this run was meant not to need "
                          "it (semantic IDs shipped with the dataset)")


try:
    import faiss  # noqa: F401  (only the SID build uses it)
except ImportError:
    sys.modules["faiss"] = MissingModule("faiss")

from recbole.utils import init_logger, set_color
from recbole.utils.logger import RemoveColorFilter
from speed import (  # a sibling script: the measurements this script shares with it
    MODES,
    Built,
    decoding_speed,
    each,
    endless,
    floor_row,
    matmul_gflops,
    measure_steps,
    peak_memory_gb,
    set_mode,
    test_batches,
    timed,
    training_step,
)
from speed import build as build_untrained

from recbole_diffgm import Config, evaluate_saved_model, load_data_and_model, run_recbole_diffgm
from recbole_diffgm.benchmark import cpu_model
from recbole_diffgm.compat import load_checkpoint
from recbole_diffgm.config import DATASET_DIR, PROPERTIES_DIR
from recbole_diffgm.files import write_text_atomically
from recbole_diffgm.checks import parse_duration

MODEL = "DiffGM"
# DiffGRM (arXiv 2510.21805), Amazon Beauty, SID level (the release's protocol), full recipe on a GPU.
PAPER = {"sid_recall@5": 0.0603, "sid_ndcg@5": 0.0414, "sid_recall@10": 0.0876, "sid_ndcg@10": 0.0502}
METRICS = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
FAST_MODES = ("CPD, beam 32", "CPD, beam 32, 2 passes", "one pass", "one pass + CPD re-rank of top 64")
CPD_DEFAULTS = {"decode_mode": "cpd", "decode_passes": None, "rerank_size": 0}


# ----- settings ------------------------------------------------------------------------------------------------

def parse_set(assignments: list[str]) -> dict:
    """``--set key=value`` (repeatable) -> ``{key: value}``, each value read as YAML (``32`` a number, ``~`` None)."""
    overrides = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --set '{assignment}': give key=value")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def device_settings(device: str) -> dict:
    """The RecBole keys that put a run on ``device``: it picks CUDA whenever torch sees a GPU unless told not to."""
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("error: --device=cuda, but torch sees no GPU (give --device=cpu)")
        return {"use_gpu": True}
    # gpu_id "" hides the GPU from RecBole (it sets CUDA_VISIBLE_DEVICES); only needed where there is one.
    return {"use_gpu": False, **({"gpu_id": ""} if torch.cuda.is_available() else {})}


def write_slice(dataset: str, users: int, root: Path) -> str:
    """The first ``users`` users of ``dataset`` with all their rows and the rows of their items, as a dataset of its
    own under ``root`` (as tests/conftest.py's ``write_slice``): a small real run whose SIDs are built here."""
    name = f"{dataset}-{users}u"
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    read = {"sep": "\t", "dtype": str, "keep_default_na": False, "quoting": csv.QUOTE_NONE}
    inter = pandas.read_csv(DATASET_DIR / dataset / f"{dataset}.inter", **read)
    item = pandas.read_csv(DATASET_DIR / dataset / f"{dataset}.item", **read)
    inter = inter[inter["user_id:token"].isin(inter["user_id:token"].drop_duplicates().iloc[:users])]
    item = item[item["item_id:token"].isin(inter["item_id:token"])]
    inter.to_csv(folder / f"{name}.inter", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    item.to_csv(folder / f"{name}.item", sep="\t", index=False, quoting=csv.QUOTE_NONE)
    return name


def run_settings(args, work: Path) -> tuple[str, list[str], dict]:
    """``(dataset, config files, config dict)`` of the run: DiffGM's defaults, the budget, the device, ``--set``."""
    config_dict = {"checkpoint_dir": str(work / "saved"), "show_progress": False, "time_budget": args.budget,
                   "time_budget_clock": "wall", **device_settings(args.device)}
    dataset, config_files = args.dataset, []
    if args.users:
        dataset = write_slice(args.dataset, args.users, work / "data")
        config_dict["data_path"] = str(work / "data")
        config_files = [str(PROPERTIES_DIR / "dataset" / f"{args.dataset}.yaml")]  # the full dataset's protocol
    return dataset, config_files, {**config_dict, **parse_set(args.set)}


def check_environment() -> dict:
    """Versions and device, and a stop before any work where the image's pandas is one RecBole cannot load with."""
    if int(pandas.__version__.split(".")[0]) >= 3:
        raise SystemExit(f"error: pandas {pandas.__version__}: RecBole 1.2.1 needs pandas < 3 (docs/compat.md); carry "
                         "pandas-2.3.3's wheel (see this script's docstring)")
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "pandas": pandas.__version__, "recbole": importlib.metadata.version("recbole"),
            "cpu": f"{cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "faiss": "placeholder (not installed)" if isinstance(sys.modules["faiss"], MissingModule) else "installed"}


def imported_distributions() -> list[str]:
    """The installed distributions this process imported: what a bare image must carry for this script."""
    owners = importlib.metadata.packages_distributions()
    top = {name.partition(".")[0] for name, module in list(sys.modules.items()) if module is not None}
    return sorted({dist for name in top for dist in owners.get(name, ())})


# ----- measuring: speed.py's measurements, against the FLOP floor ----------------------------------------------

def measure_training(model, train, device: torch.device, steps: int, gflops: float) -> dict:
    """Rows/s of ``steps`` AdamW steps (after two warm-up steps) against their FLOP floor (FLOPs per row counted on
    one more step: a slice's last batch of an epoch is smaller)."""
    model.train()
    step = training_step(model, torch.optim.AdamW(model.parameters(), lr=1e-4), device)
    measured = measure_steps(step, endless(train), steps, device, warmup=2)
    rows, seconds, flops_per_row = measured["rows"], measured["seconds"], measured["flops_per_row"]
    return {"rows_per_s": rows / seconds, "rows_per_step": rows / steps, "steps": steps,
            "flops_per_row": flops_per_row, "peak_gb": peak_memory_gb(device),
            **floor_row(flops_per_row * rows / steps, seconds / steps, gflops)}


@torch.no_grad()
def measure_decoding(model, batches: list, device: torch.device, gflops: float) -> dict:
    """Decode ms/user over ``batches`` (after a warm-up batch) and one user's decode against its FLOP floor; beside
    it, ms/user of the full item scoring (``full_sort_predict``: what item-level evaluation runs)."""
    decoded = decoding_speed(model, batches[0], batches, model.beam_size, device)
    users = decoded["users"]
    scoring = timed(lambda: each(model.full_sort_predict, batches), device)
    return {"beam": model.beam_size, "users": users, "ms_per_user": decoded["ms_per_user"],
            "score_ms_per_user": 1000 * scoring / users, "peak_gb": peak_memory_gb(device),
            **floor_row(decoded["flops_per_user"], decoded["seconds"] / users, gflops)}


def user_batches(test, users: int, batch_size: int, device: torch.device) -> list:
    """The first ``users`` test users, ``batch_size`` at a time, on ``device`` (speed.py's ``test_batches``)."""
    return [part.to(device) for part, _ in test_batches(test, users, batch_size)]


# ----- data and SIDs -------------------------------------------------------------------------------------------

def build(dataset: str, config_files: list[str], config_dict: dict) -> Built:
    """``(config, dataset, train, valid, test, model)`` of the run's settings, the model untrained (speed.py's
    ``build``): amazon-beauty's SIDs come from its shipped file (``dataset.sid_source``), a slice's are built (or
    read from the work folder's cache)."""
    return build_untrained(MODEL, dataset, config_files, {**config_dict, "state": "WARNING"})


# ----- speed of the untrained network, and the validation plan it gives ----------------------------------------

def speed_phase(args, dataset: str, config_files: list[str], config_dict: dict) -> dict:
    """The recipe's untrained network on the device: training and decoding speed against the FLOP floor (the work
    per row and per beam does not depend on the weights), and the sizes the validation plan needs."""
    config, data, train, valid, test, model = build(dataset, config_files, config_dict)
    device = config["device"]
    model = model.to(device)
    rates = {"fp32": matmul_gflops(device, torch.float32)}
    if device.type == "cuda":
        rates["bf16"] = matmul_gflops(device, torch.bfloat16)
    floor_rate = "bf16" if config["mixed_precision"] == "bf16" and "bf16" in rates else "fp32"
    result = {"sid_source": data.sid_source, "sid_report": str(data.sid_report), "matmul_gflops": rates,
              "floor_rate": floor_rate, "train": measure_training(model, train, device, args.speed_steps,
                                                                 rates[floor_rate])}
    batches = user_batches(test, args.decode_users, args.decode_batch or config["eval_batch_size"], device)
    for beam in dict.fromkeys((config["test_beam_size"], config["valid_beam_size"])):
        model.beam_size = beam
        result[f"decode_beam_{beam}"] = measure_decoding(model, batches, device, rates[floor_rate])
    result["sizes"] = {"train_rows": train.sample_size, "valid_users": valid.sample_size, "epochs": config["epochs"],
                       "eval_start_epoch": config["eval_start_epoch"] or 0, "eval_step": config["eval_step"],
                       "valid_beam_size": config["valid_beam_size"]}
    return result


def plan_validation(budget_s: float, epoch_s: float, valid_s: float, sizes: dict, given: set[str],
                    valid_share: float) -> dict:
    """``eval_start_epoch`` and ``eval_step`` for a budgeted run, from the measured epoch and validation times.

    The budget stops training only after a first validation, and the paper's recipe validates from epoch 20: where
    fewer epochs fit, the first validation moves to half of those that fit. Validation is not counted in the budget,
    so ``eval_step`` grows until the expected validations take at most ``valid_share`` of it, but not past the epochs
    from the first validation to the last that fits: RecBole validates epoch ``e`` when ``(e + 1) % eval_step == 0``,
    and one validation at least must come inside the budget. Keys in ``given`` (the user's ``--set``) are kept."""
    fit = min(sizes["epochs"], budget_s / epoch_s)
    start = sizes["eval_start_epoch"] if "eval_start_epoch" in given else min(sizes["eval_start_epoch"], int(fit // 2))
    step = sizes["eval_step"]
    if "eval_step" not in given:
        step = max(step, math.ceil(max(fit - start, 1) * valid_s / (valid_share * budget_s)))
        step = min(step, max(1, int(fit) - start))
    return {"overrides": {key: value for key, value in (("eval_start_epoch", start), ("eval_step", step))
                          if key not in given},
            "epoch_s": epoch_s, "valid_s": valid_s, "epochs_that_fit": fit, "valid_share": valid_share,
            "recipe": {"eval_start_epoch": sizes["eval_start_epoch"], "eval_step": sizes["eval_step"]}}


def plan_from_speed(args, speed: dict, given: set[str]) -> dict:
    """``plan_validation`` on the speed phase's figures: an epoch of training rows at the measured rows/s, a validation
    of every validation user at the item scoring's ms/user with the validation beam."""
    sizes = speed["sizes"]
    epoch_s = sizes["train_rows"] / speed["train"]["rows_per_s"]
    valid_s = sizes["valid_users"] * speed[f"decode_beam_{sizes['valid_beam_size']}"]["score_ms_per_user"] / 1000
    return plan_validation(parse_duration(args.budget, "--budget"), epoch_s, valid_s, sizes, given, args.valid_share)


# ----- training ------------------------------------------------------------------------------------------------

def train_phase(dataset: str, config_files: list[str], config_dict: dict, out: Path) -> dict:
    """The budgeted run; its learning curve copied to ``out``."""
    result = run_recbole_diffgm(MODEL, dataset, config_files, config_dict)
    if Path(result["curve_file"]).is_file():  # written at the first validation
        shutil.copyfile(result["curve_file"], out / "curve.csv")
    return {key: result[key] for key in ("best_valid_score", "best_valid_result", "test_result", "train_seconds",
                                         "train_cpu_seconds", "valid_seconds", "epochs_run", "best_epoch",
                                         "stop_reason", "curve", "test_seconds", "test_users", "parameters",
                                         "device", "model_file")}


# ----- evaluation: the checkpoint tested in every mode, at both levels -----------------------------------------

def evaluation_phase(run: dict, save: Callable[[dict], None]) -> dict:
    """Every mode at both levels through ``evaluate_saved_model`` (the run's own test is CPD at the test beam, item
    level); what is tested so far is saved after each."""
    test_beam = load_checkpoint(run["model_file"])["config"]["test_beam_size"]
    tested: dict[str, dict] = {"item": {}, "sid": {}}
    for label, fields, beam in eval_modes(test_beam):
        for level in ("item", "sid"):
            if (label, level) == (f"CPD, beam {test_beam}", "item"):
                tested[level][label] = {**{k: float(v) for k, v in run["test_result"].items()},
                                        "seconds": run["test_seconds"]}
                continue
            start = time.perf_counter()
            metrics = evaluate_saved_model(run["model_file"], {**CPD_DEFAULTS, **fields, "test_beam_size": beam,
                                                               "eval_level": level, "show_progress": False})
            tested[level][label] = {**{k: float(v) for k, v in metrics.items()}, "seconds": time.perf_counter() - start}
            getLogger().info(set_color(f"{label}, {level} level", "green") + f": {tested[level][label]}")
            save(tested)
    return tested


def eval_modes(test_beam: int) -> list[tuple[str, dict, int]]:
    """CPD at the test beam (the paper's 256), then the fast modes of speed.py's table (once each, should a dry run's
    test beam be one of theirs)."""
    modes: dict[str, tuple[str, dict, int]] = {}
    for mode in [(f"CPD, beam {test_beam}", {}, test_beam), *(mode for mode in MODES if mode[0] in FAST_MODES)]:
        modes.setdefault(mode[0], mode)
    return list(modes.values())


# ----- the trained checkpoint measured: each mode's decoding speed, bf16 and compile ---------------------------

def floor_gflops(results: dict) -> float:
    """The matrix-multiply rate of the FLOP floor: the speed phase's, or measured now when it was skipped."""
    speed = results.get("speed")
    if speed:
        return speed["matmul_gflops"][speed["floor_rate"]]
    return matmul_gflops(torch.device("cuda" if results["device"] == "cuda" else "cpu"), torch.float32)


@torch.no_grad()
def modes_phase(args, model_file: str, gflops: float) -> dict:
    """Decode ms/user of every mode on the trained checkpoint, against its FLOP floor."""
    config, model, _, _, _, test = load_data_and_model(model_file, {"show_progress": False})
    device = config["device"]
    batches = user_batches(test, args.decode_users, args.decode_batch or config["eval_batch_size"], device)
    result = {}
    for label, fields, beam in eval_modes(config["test_beam_size"]):
        set_mode(model, fields, beam)
        result[label] = measure_decoding(model, batches, device, gflops)
    return result


@contextmanager
def compile_backend(backend: str | None) -> Iterator[list]:
    """``torch.nn.Module.compile`` with ``backend`` while a model is built, and the modules it compiled: a CPU dry
    run traces with dynamo's eager backend (inductor takes minutes to compile on a CPU; tests do the same)."""
    compile_module, compiled = torch.nn.Module.compile, []

    def compile_with_backend(module, *compile_args, **kwargs):
        compiled.append(type(module).__name__)
        compile_module(module, *compile_args, **({"backend": backend} if backend else {}), **kwargs)

    torch.nn.Module.compile = compile_with_backend
    try:
        yield compiled
    finally:
        torch.nn.Module.compile = compile_module


@torch.no_grad()
def variant_outputs(model, train_batch, item_seq: torch.Tensor, device: torch.device) -> dict:
    """One model's loss on ``train_batch`` and its decoding of ``item_seq``: sorted beam scores, top-10 SIDs, the
    first call's seconds (compilation, for a compiled model) and a second call's ms/user."""
    model.eval()
    torch.manual_seed(0)
    outputs = {}
    loss_s = timed(lambda: outputs.update(loss=model.calculate_loss(train_batch).float().item()), device)
    first = timed(lambda: model.decode(item_seq, model.beam_size), device)
    seconds = timed(lambda: outputs.update(scores=model.decode(item_seq, model.beam_size)[1].float().cpu()), device)
    top10 = [[tuple(sid) for sid in codes.tolist()] for codes, _ in model.generate(item_seq, 10)]
    return {**outputs, "top10": top10, "loss_first_call_s": loss_s, "first_call_s": first,
            "ms_per_user": 1000 * seconds / len(item_seq)}


def compare(reference: dict, variant: dict) -> dict:
    """A variant against fp32: loss and beam-score differences (max abs, relative to the largest score), top-10s."""
    a, b = reference["scores"], variant["scores"]
    finite = a.isfinite() & b.isfinite()
    diff = (a - b).abs()[finite]
    pairs = list(zip(reference["top10"], variant["top10"]))
    same = [x == y for x, y in pairs]
    overlap = [len(set(x) & set(y)) / max(len(x), len(y)) if x or y else 1.0 for x, y in pairs]
    return {"loss": variant["loss"], "loss_abs_diff": abs(variant["loss"] - reference["loss"]),
            "loss_rel_diff": abs(variant["loss"] - reference["loss"]) / abs(reference["loss"]),
            "score_max_abs_diff": float(diff.max()) if len(diff) else math.nan,
            "score_max_rel_diff": float(diff.max() / a[finite].abs().max()) if len(diff) else math.nan,
            "finite_scores_agree": bool((a.isfinite() == b.isfinite()).all()),
            "top10_identical": sum(same) / len(same), "top10_overlap": sum(overlap) / len(overlap),
            "top10_length": sum(len(y) for _, y in pairs) / len(pairs),
            "loss_first_call_s": variant["loss_first_call_s"], "first_call_s": variant["first_call_s"],
            "ms_per_user": variant["ms_per_user"]}


def precision_phase(args, model_file: str) -> dict:
    """bf16 autocast and ``compile: true`` against fp32: the checkpoint loaded three times, as a user loads it."""
    config, model, _, train, _, test = load_data_and_model(model_file, {"show_progress": False})
    device = config["device"]
    train_batch = next(iter(train)).to(device)
    item_seq = torch.cat([batch[model.ITEM_SEQ] for batch in user_batches(test, args.check_users, args.check_users,
                                                                           device)])  # padded to one length
    reference = variant_outputs(model, train_batch, item_seq, device)
    result = {"users": len(item_seq), "train_rows": len(train_batch), "beam": model.beam_size,
              "fp32": {**{key: reference[key] for key in ("loss", "loss_first_call_s", "first_call_s", "ms_per_user")},
                       "top10_length": sum(map(len, reference["top10"])) / len(reference["top10"])}}
    for name, overrides in (("bf16", {"mixed_precision": "bf16"}), ("compile", {"compile": True})):
        with compile_backend(args.compile_backend) as compiled:
            _, variant, *_ = load_data_and_model(model_file, {**overrides, "show_progress": False})
        result[name] = {**compare(reference, variant_outputs(variant, train_batch, item_seq, device)),
                        "compiled_modules": len(compiled)}
    result["compile"]["backend"] = args.compile_backend or "inductor"
    return result


# ----- output --------------------------------------------------------------------------------------------------

def fmt(value: float | None) -> str:
    """A metric as the paper prints it (.0502)."""
    return "" if value is None else f"{value:.4f}".removeprefix("0")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table."""
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(row)} |" for row in rows)]


def metrics_table(results: dict) -> list[str]:
    """Every mode at both levels, the paper's SID-level figures first."""
    rows = [["DiffGRM paper (full recipe, CPD beam 256)", "SID", *(fmt(PAPER[f"sid_{m}"]) for m in METRICS), ""]]
    for level, prefix in (("sid", "sid_"), ("item", "")):
        for label, metrics in results.get("test", {}).get(level, {}).items():
            rows.append([label, "SID" if level == "sid" else "item", *(fmt(metrics.get(prefix + m)) for m in METRICS),
                         f"{metrics['seconds']:.1f}"])
    return table(["mode", "level", "R@5", "N@5", "R@10", "N@10", "eval s (load included)"], rows)


def speed_table(results: dict) -> list[str]:
    """Training rows/s and decode ms/user, each against its FLOP floor."""
    speed = results.get("speed", {})
    train = speed.get("train")
    rows = []
    if train:
        rows.append([f"training step, {train['rows_per_step']:,.0f} rows", f"{train['rows_per_s']:,.0f} rows/s",
                     f"{train['gflops']:,.2f}", f"{train['floor_ms']:,.2f}", f"{train['measured_ms']:,.2f}",
                     f"{train['over_floor']:.1f}", f"{train['peak_gb']:.1f}"])
    decodes = [(f"CPD beam {row['beam']}, untrained", row) for key, row in speed.items() if key.startswith("decode_")]
    for label, row in decodes + [(f"{label}, trained", row) for label, row in results.get("modes", {}).items()]:
        rows.append([f"decode: {label}", f"{row['ms_per_user']:,.3f} ms/user", f"{row['gflops']:,.4f}",
                     f"{row['floor_ms']:,.4f}", f"{row['measured_ms']:,.4f}", f"{row['over_floor']:.1f}",
                     f"{row['peak_gb']:.1f}"])
    run = results.get("run")
    if run and speed:
        rows_per_s = speed["sizes"]["train_rows"] * run["epochs_run"] / run["train_seconds"]
        rows.append(["training, the whole run (its data loading included)", f"{rows_per_s:,.0f} rows/s", *[""] * 5])
    if not rows:
        return []
    rate = speed.get("floor_rate", "fp32")
    title = (f"## Speed against the FLOP floor ({rate} matrix multiply measured here: "
             f"{speed['matmul_gflops'][rate]:,.0f} GFLOP/s)" if speed else "## Speed")
    header = ["work (per step, or per user)", "speed", "GFLOPs", "floor ms", "measured ms", "measured / floor",
              "peak GB"]
    return ["", title, "", *table(header, rows)]


def precision_table(results: dict) -> list[str]:
    """bf16 and compile against fp32: loss, beam scores, top-10 SIDs, time."""
    check = results.get("precision")
    if not check:
        return []
    fp32 = check["fp32"]
    rows = [["fp32", f"{fp32['loss']:.5f}", "", "", "", f"{fp32['top10_length']:.1f}", "", "",
             f"{fp32['loss_first_call_s']:.2f} / {fp32['first_call_s']:.2f}", f"{fp32['ms_per_user']:.3f}"]]
    for name in ("bf16", "compile"):
        row = check[name]
        label = f"compile ({row['backend']}, {row['compiled_modules']} modules)" if name == "compile" else name
        rows.append([label, f"{row['loss']:.5f}", f"{row['loss_rel_diff']:.2e}", f"{row['score_max_abs_diff']:.2e}",
                     f"{row['score_max_rel_diff']:.2e}", f"{row['top10_length']:.1f}", f"{row['top10_identical']:.0%}",
                     f"{row['top10_overlap']:.0%}", f"{row['loss_first_call_s']:.2f} / {row['first_call_s']:.2f}",
                     f"{row['ms_per_user']:.3f}"])
    title = (f"## bf16 and compile against fp32 (loss on {check['train_rows']} training rows; CPD beam "
             f"{check['beam']} on {check['users']} test users)")
    header = ["variant", "loss", "loss rel diff", "score max abs diff", "score max rel diff", "SIDs listed (of 10)",
              "top-10 SIDs identical", "top-10 overlap", "first call s: loss / decode", "decode ms/user"]
    return ["", title, "", *table(header, rows)]


def summary(results: dict) -> list[str]:
    """The command, machine, plan and run, one line each."""
    env, run, plan = results["env"], results.get("run"), results.get("plan")
    lines = [f"Command: `{results['command']}`  ",
             f"Machine: {env['cpu']}; GPU: {env['gpu'] or 'none'}; torch {env['torch']}; device {results['device']}  ",
             f"Dataset: {results['dataset']}; budget {results['budget']} (wall clock, training only)  "]
    if plan:
        lines.append(f"Plan from the measured speed: an epoch ≈ {plan['epoch_s']:.1f} s, a validation ≈ "
                     f"{plan['valid_s']:.1f} s, {plan['epochs_that_fit']:.1f} epochs fit: "
                     f"{plan['overrides'] or 'as the recipe'} (recipe: {plan['recipe']})  ")
    if run:
        lines.append(f"Run: {run['epochs_run']} epochs, best {run['best_epoch']}, stopped by the {run['stop_reason']}; "
                     f"training {run['train_seconds'] / 60:.1f} min, validation {run['valid_seconds'] / 60:.1f} min; "
                     f"{run['parameters']:,} parameters")
    return lines


def report(results: dict) -> str:
    """The markdown report: the test table beside the paper's, speed, precision, the run and its plan."""
    lines = ["# DiffGM, the DiffGRM paper's Beauty recipe", "", *summary(results), "",
             "## Test split, the selected checkpoint (SID level: the DiffGRM release's protocol)", "",
             *metrics_table(results), *speed_table(results), *precision_table(results)]
    if results.get("timings"):
        lines += ["", "Phases (s): " + ", ".join(f"{name} {s:.0f}" for name, s in results["timings"].items())]
    return "\n".join(lines) + "\n"


def save(out: Path, results: dict) -> None:
    """``metrics.json`` and ``report.md`` as they stand, each replaced whole (a kill mid-write loses nothing)."""
    write_text_atomically(json.dumps(results, indent=1, default=str), out / "metrics.json")
    write_text_atomically(report(results), out / "report.md")


@contextmanager
def log_to(path: Path) -> Iterator[None]:
    """RecBole's log (the root logger) also into ``path``, at INFO, for the length of the script."""
    root = logging.getLogger()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s  %(message)s"))
    handler.addFilter(RemoveColorFilter())
    level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


# ----- the command line: the phases in turn --------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (e.g. $OUT on the device machine)")
    parser.add_argument("--budget", default="8m", help="training time budget, wall clock (90s, 8m, 1h)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--dataset", default="amazon-beauty")
    parser.add_argument("--users", type=int, help="a slice: the first USERS users (SIDs built here, with faiss)")
    parser.add_argument("--work", help="checkpoints, caches, RecBole's log/ (default: a new temporary folder)")
    parser.add_argument("--speed_steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--decode_users", type=int, default=2048, help="test users timed per decoding mode")
    parser.add_argument("--decode_batch", type=int, help="users per decoding batch (default: eval_batch_size)")
    parser.add_argument("--check_users", type=int, default=256, help="test users of the bf16 / compile check")
    parser.add_argument("--valid_share", type=float, default=0.25, help="validation time, as a share of the budget")
    parser.add_argument("--compile_backend", help="torch.compile backend (default inductor; eager for CPU dry runs)")
    parser.add_argument("--skip", action="append", default=[], choices=("speed", "test", "modes", "precision"))
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """The whole reproduction; returns what ``metrics.json`` holds."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu-paper-"))
    command = "python benchmarks/gpu_paper.py " + " ".join(sys.argv[1:] if argv is None else argv)
    (out / "command.txt").write_text(command + "\n")
    results = {"command": command, "env": check_environment(), "budget": args.budget, "device": args.device,
               "work": str(work), "timings": {}}
    dataset, config_files, config_dict = run_settings(args, work)
    results |= {"dataset": dataset, "overrides": parse_set(args.set)}
    with own_command_line():
        init_logger(Config(MODEL, dataset, config_files, config_dict))  # RecBole's console and log/, as a run's
        with log_to(out / "run.log"):
            return run_phases(args, out, dataset, config_files, config_dict, results)


@contextmanager
def own_command_line() -> Iterator[None]:
    """RecBole's ``Config`` reads ``sys.argv`` as config keys: this script's flags are none of them (cli.py does
    the same while a recommendation loads)."""
    command_line, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = command_line


def run_phases(args, out: Path, dataset: str, config_files: list[str], config_dict: dict, results: dict) -> dict:
    """Each phase in turn, its result saved as ``results[key]`` when it ends (a run killed at a time limit keeps the
    phases before)."""

    def phase(name: str, key: str, work: Callable[[], object]) -> None:
        getLogger().info(set_color(f"gpu_paper: {name}", "blue"))
        start = time.perf_counter()
        results[key] = work()
        results["timings"][name] = time.perf_counter() - start
        save(out, results)

    if "speed" not in args.skip:
        phase("speed", "speed", lambda: speed_phase(args, dataset, config_files, config_dict))
        phase("plan", "plan", lambda: plan_from_speed(args, results["speed"], set(results["overrides"])))
        getLogger().info(f"validation plan: {results['plan']}")
        config_dict = {**config_dict, **results["plan"]["overrides"]}
    phase("train", "run", lambda: train_phase(dataset, config_files, config_dict, out))
    run = results["run"]
    if "test" not in args.skip:
        phase("test", "test", lambda: evaluation_phase(run, lambda tested: save(out, {**results, "test": tested})))
    if "modes" not in args.skip:
        phase("modes", "modes", lambda: modes_phase(args, run["model_file"], floor_gflops(results)))
    if "precision" not in args.skip:
        phase("precision", "precision", lambda: precision_phase(args, run["model_file"]))
    results["env"] |= {"ray_imported": sys.modules.get("ray") is not None, "imported": imported_distributions()}
    save(out, results)
    return results


if __name__ == "__main__":
    print(report(main()))  # a script's report, not library logging
