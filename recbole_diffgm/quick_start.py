"""One run, RecBole-style: config -> dataset -> dataloaders -> model -> trainer -> metrics.

Mirrors ``recbole.quick_start`` without importing it: that module imports Ray at the top, and the
training path must not need Ray (it is only needed for tuning).
"""

from __future__ import annotations

import time
from logging import getLogger
from pathlib import Path

import torch
from recbole.data import data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_logger, init_seed, set_color

from recbole_diffgm.compat import load_checkpoint
from recbole_diffgm.config import DATASET_DIR, Config
from recbole_diffgm.data.cold_items import cold_case_mask
from recbole_diffgm.data.dataset import SIDDataset
from recbole_diffgm.data.sid import SIDSettings, ship_sids
from recbole_diffgm.errors import InputError
from recbole_diffgm.utils import create_dataset, get_model, get_trainer


# The recipe of each plugin model that trains for an hour on a CPU (properties/recipes/): named when a run on a CPU
# without a time budget would train for longer (the models' defaults are the papers' GPU recipes).
CPU_RECIPES = {"DiffGM": "DiffGM-ocn-cpu", "DigitClassifier": "DigitClassifier-cpu", "TIGER": "TIGER-cpu"}


def slow_run_advice(config) -> str | None:
    """What to run instead of a run on a CPU that would train for hours: the model's CPU recipe, or a time budget."""
    if config["device"].type != "cpu" or config["time_budget"] is not None:
        return None
    recipe = CPU_RECIPES.get(config["model"])
    if recipe is None:
        return "on a CPU, time_budget (e.g. --time_budget=60m) ends training in time"
    return (f"on a CPU, --model={config['model']}@{recipe} trains for 60 CPU-minutes, validation extra "
            f"(properties/recipes/{recipe}.yaml)")


def dataset_summary(dataset) -> str:
    """``name: users, items, interactions``, counted without RecBole's padding id 0."""
    return (
        f"{dataset.dataset_name}: {dataset.user_num - 1:,} users, {dataset.item_num - 1:,} items, "
        f"{dataset.inter_num:,} interactions"
    )


def run_recbole_diffgm(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True,
                       nproc=1, world_size=-1, ip="localhost", port="5678", group_offset=0, callback_fn=None,
                       test=True, resume_file=None):
    """Train ``model`` on ``dataset`` and evaluate it on the test split.

    Args:
        model (str or class): a model name (this plugin's or RecBole's) or a model class.
        dataset (str): a dataset name, a folder ``<data_path>/<dataset>/`` with atomic files.
        config_file_list (list of str): yaml files, applied in order.
        config_dict (dict): parameters that override the files.
        saved (bool): keep the best checkpoint (selected on validation) and test it; otherwise test
            the model of the last epoch.
        nproc, world_size, ip, port, group_offset: RecBole's distributed data parallel run: ``nproc``
            processes on this machine (one per GPU; Gloo on the CPU when there is none), ``world_size``
            processes in all, rank 0 reachable at ``ip:port``, this machine's first rank ``group_offset``.
        callback_fn (callable): ``callback_fn(epoch, valid_score)`` after every validation (RecBole's).
        test (bool): evaluate the test split; ``False`` for searches, which select on validation alone.
        resume_file (str): continue an interrupted run from its ``<best checkpoint>-resume.pth`` (written at
            the start of every epoch), with that run's config; ``model``, ``dataset`` and the config files are
            ignored, and of ``config_dict`` only where the run's files are now (``RELOCATABLE_KEYS``).

    Returns:
        dict: ``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``, ``test_result``,
        ``train_seconds``, ``train_cpu_seconds`` (this process's CPU time; both without validation, across
        resumes), ``valid_seconds`` (validation, wall), ``epochs_run``, ``best_epoch``, ``stop_reason``
        (``patience``, ``epoch cap`` or ``time budget``), ``curve`` (a row per validation: epoch, training seconds
        so far, every validation metric) and its ``curve_file``, ``test_result_by_case`` (with ``cold_items``: the
        test metrics of the ``in-set`` and ``cold`` cases alone, each with its count of ``cases``), ``test_seconds`` (loading the best checkpoint and
        scoring every test user), ``test_users``, ``parameters``, ``device`` and ``model_file`` (``None`` when not
        saved); with several processes, rank 0's.
    """
    if resume_file:
        if not Path(resume_file).is_file():
            raise InputError(f"resume file not found: {resume_file}")
        stored = load_checkpoint(resume_file)["config"]
        model = stored["model"]
        processes = 1 if stored["single_spec"] else stored["world_size"]
        if nproc == 1 and world_size <= 0 and not stored["single_spec"]:  # a DDP run resumes as it ran
            nproc, world_size = stored["nproc"], stored["world_size"]
        elif (world_size if world_size > 0 else nproc) != processes:
            raise InputError(f"{resume_file} is the state of a run of {processes} process(es): resume it with as "
                             "many (its shuffling and budget are per process)")
    if nproc == 1 and world_size <= 0:
        return _run(model, dataset, config_file_list, config_dict, saved, callback_fn, test, resume_file)
    distributed = {"world_size": nproc if world_size == -1 else world_size, "ip": ip, "port": str(port),
                   "nproc": nproc, "offset": group_offset}
    # RecBole's init_logger creates ./log/<model>/ unless it exists, a race between the processes.
    Path("log", model if isinstance(model, str) else model.__name__).mkdir(parents=True, exist_ok=True)
    context = torch.multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    torch.multiprocessing.start_processes(
        _run_rank, args=(model, dataset, config_file_list, {**(config_dict or {}), **distributed}, saved, results,
                         resume_file),
        nprocs=nproc, join=True, start_method="spawn")
    return None if results.empty() else results.get()


# Where a run's files are, not what it computes: a resumed run takes them from the caller, so that it goes on in
# another checkout or on another machine (a benchmark's run key leaves them out for the same reason).
RELOCATABLE_KEYS = ("data_path", "checkpoint_dir", "sid_cache_dir")


def relocate(config, config_dict: dict) -> list[str]:
    """A saved run's ``config`` with the places that ``config_dict`` gives (``data_path`` as RecBole takes it: the
    folder that holds the dataset's folder); a stored dataset folder that is gone becomes the default
    ``data_path``'s, where one of that name is there (the bundled data in another checkout). What moved, in words."""
    places = {key: config_dict[key] for key in RELOCATABLE_KEYS if config_dict.get(key) is not None}
    if "data_path" in places:
        places["data_path"] = str(Path(places["data_path"]) / config["dataset"])
    elif not Path(config["data_path"]).is_dir() and (DATASET_DIR / config["dataset"]).is_dir():
        places["data_path"] = str(DATASET_DIR / config["dataset"])
    moved = [f"saved run: {key} {value} (it was {config[key]})" for key, value in places.items()
             if value != config[key]]
    for key, value in places.items():
        config[key] = value
    return moved


def restored_config(model_file, checkpoint: dict, places: dict | None, overrides: dict | None = None):
    """The config of a saved run (``checkpoint``, read from ``model_file``) as this version runs it: where its
    files are now (``relocate``), ``overrides``, and the keys added since it was saved at today's defaults (a key
    is added with the default that computes what the code did before it). Returns ``(config, notes)``: what
    changed, in words, for the log (which is set up from this config)."""
    config = checkpoint["config"]
    notes = relocate(config, places or {})
    for key, value in (overrides or {}).items():
        config[key] = value
    defaults = Config(config["model"], config["dataset"], config_dict={"data_path": str(Path(config["data_path"]).parent)})
    # (RecBole's Config also reads the command line; those keys are this process's, not missing defaults.)
    missing = sorted(set(defaults.final_config_dict) - set(config.final_config_dict) - set(defaults.cmd_config_dict))
    for key in missing:
        config[key] = defaults[key]
    if missing:
        notes.append(f"{model_file} predates the config keys {', '.join(missing)}; they take their defaults")
    return config, notes


def _run_rank(local_rank, model, dataset, config_file_list, config_dict, saved, results, resume_file=None):
    result = _run(model, dataset, config_file_list, {**config_dict, "local_rank": local_rank}, saved,
                  resume_file=resume_file)
    if local_rank + config_dict["offset"] == 0:
        results.put(result)
    torch.distributed.destroy_process_group()


def _run(model, dataset, config_file_list, config_dict, saved, callback_fn=None, test=True, resume_file=None):
    notes = []
    if resume_file:  # where its files are now, and the keys added since at the values that compute as it did
        config, notes = restored_config(resume_file, load_checkpoint(resume_file), config_dict)
        if "local_rank" in (config_dict or {}):  # one rank of a resumed DDP run
            config.join_process_group(config_dict)
    else:
        config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    for line in notes:
        logger.info(line)
    dataset = create_dataset(config)  # first, so that a missing dataset is the only line printed
    logger.info(config)
    logger.info(dataset)
    logger.info(set_color(dataset_summary(dataset), "green"))
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    flops = get_flops(model, dataset, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    trainer.slow_run_advice = slow_run_advice(config)
    if resume_file:
        trainer.resume_checkpoint(resume_file)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"], callback_fn=callback_fn
    )
    train_seconds, valid_seconds = trainer.training_seconds(), trainer.validation_seconds()
    logger.info(f"training stopped by the {trainer.stop_reason} after {trainer.epochs_trained} epochs: "
                f"{train_seconds['wall'] / 60:.1f} min training ({train_seconds['process'] / 60:.1f} CPU-min) and "
                f"{valid_seconds['wall'] / 60:.1f} min validation; best epoch {trainer.best_epoch()}; "
                f"learning curve: {trainer.curve_file}")
    if saved and test:  # until the test is done, a killed run resumes to its test
        trainer.save_trained_state()
    start = time.perf_counter()
    test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"]) if test else None
    test_seconds = time.perf_counter() - start
    test_by_case = evaluate_by_case(trainer, test_data, config["show_progress"]) if test else {}
    trainer.discard_resume_state()

    logger.info("The running environment of this training is as follows:\n" + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    for case, result in test_by_case.items():
        logger.info(set_color(f"test result, {case} items", "yellow") + f": {result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "test_result_by_case": test_by_case,
        "train_seconds": train_seconds["wall"],
        "train_cpu_seconds": train_seconds["process"],
        "valid_seconds": valid_seconds["wall"],
        "epochs_run": trainer.epochs_trained,
        "best_epoch": trainer.best_epoch(),
        "stop_reason": trainer.stop_reason,
        "curve": trainer.curve,
        "curve_file": str(trainer.curve_file),
        "test_seconds": test_seconds,
        "test_users": test_data.sample_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(config["device"]),
        "model_file": trainer.saved_model_file if saved else None,
    }


def evaluate_by_case(trainer, eval_data, show_progress: bool = False) -> dict[str, dict]:
    """Under the item cold-start protocol (``cold_items``), the metrics of the ``in-set`` and of the ``cold`` cases
    of ``eval_data`` alone (``{}`` without it): RecBole's evaluation of a copy of the split that holds only those
    cases, with the model as it is (after the overall evaluation has loaded the best checkpoint)."""
    cold = cold_case_mask(eval_data._dataset)
    if cold is None:
        return {}
    results = {}
    for case, rows in (("in-set", ~cold), ("cold", cold)):
        subset = eval_data._dataset.copy(eval_data._dataset.inter_feat[rows])
        loader = type(eval_data)(eval_data.config, subset, eval_data._sampler, shuffle=False)
        results[case] = {**dict(trainer.evaluate(loader, load_best_model=False, show_progress=show_progress)),
                         "cases": int(rows.sum())}
    return results


def build_item_sids(model=None, dataset=None, config_file_list=None, config_dict=None, ship=False):
    """Build (or load from the cache) the semantic IDs of ``dataset`` and report them, without training. With
    ``ship``, also write them beside the dataset's atomic files (``data.sid.ship_sids``), where every later run
    with the same settings takes them as they are, on any machine.

    Returns:
        SIDDataset: the dataset, with ``item_sid`` and ``sid_report``.
    """
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    dataset = create_dataset(config, SIDDataset)
    logger.info(set_color(dataset_summary(dataset), "green"))
    logger.info(set_color(f"semantic IDs ({config['sid_quantizer']}, before sid_collision {config['sid_collision']})", "green")
                + f": {dataset.sid_report}")
    codes = dataset.item_sid[1:]
    _, group, size = codes.unique(dim=0, return_inverse=True, return_counts=True)
    largest = (group == size.argmax()).nonzero()[:, 0] + 1
    texts = dataset.item_texts(config).texts
    if ship:
        settings = SIDSettings.from_config(config)
        ship_sids(texts, settings, dataset.shipped_sids_file(config, settings, texts), config["show_progress"])
    logger.info(f"largest group, SID {codes[largest[0] - 1].tolist()}, {len(largest)} items:\n"
                + "\n".join(f"  {dataset.id2token(dataset.iid_field, i)}  {texts[i - 1]}" for i in largest[:10].tolist()))
    return dataset


def load_data_and_model(model_file, config_overrides=None):
    """Load a saved run: its config, model (with the saved weights), dataset and dataloaders, in this
    single process (a run trained with DDP loads as one process, on CUDA when there is a GPU).
    ``config_overrides`` change evaluation settings before the model is built (e.g. ``eval_level: sid``), or say
    where the run's files are now (``RELOCATABLE_KEYS``: it was saved in another checkout or on another machine).

    Returns:
        tuple: ``(config, model, dataset, train_data, valid_data, test_data)``, as RecBole's.
    """
    checkpoint = load_checkpoint(model_file)
    overrides = {key: value for key, value in (config_overrides or {}).items() if key not in RELOCATABLE_KEYS}
    config, notes = restored_config(model_file, checkpoint, config_overrides, overrides)
    if not config["single_spec"]:
        config["single_spec"], config["local_rank"] = True, 0
        config["device"] = torch.device("cuda" if torch.cuda.is_available() and config["use_gpu"] else "cpu")
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    for line in notes:
        getLogger().warning(line)
    dataset = create_dataset(config, sid_catalogue=(checkpoint.get("other_parameter") or {}).get("sid_catalogue"))
    getLogger().info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def evaluate_saved_model(model_file, config_overrides=None, split="test"):
    """Evaluate a saved run again on ``split`` (``test`` or ``valid``), e.g. with ``eval_level: sid`` or
    another ``test_beam_size`` in ``config_overrides``. Returns the metrics, as ``trainer.evaluate``."""
    config, model, _, _, valid_data, test_data = load_data_and_model(model_file, config_overrides)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    data = {"test": test_data, "valid": valid_data}[split]
    return trainer.evaluate(data, load_best_model=False, show_progress=config["show_progress"])
