"""Command line: ``python run_recbole_diffgm.py --model=SASRec --dataset=amazon-beauty [--key=value ...]``.

As RecBole's ``run_recbole.py``: ``--config_files`` takes space-separated yaml files, and every other
``--key=value`` overrides that config key (RecBole's Config reads them from the command line).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from recbole_diffgm.errors import InputError


def _parse(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(
        prog="run_recbole_diffgm.py",
        description="Train and test one model on one dataset with RecBole and recbole-diffgm.",
        epilog="Any other --key=value overrides that RecBole config key, e.g. --epochs=10 --learning_rate=0.001.",
    )
    parser.add_argument("--model", "-m", default="SASRec",
                        help="model name (default: %(default)s), optionally Model@recipe or Model@recipe+recipe (yaml "
                             "files or names in properties/recipes, before --config_files); several, comma-separated, "
                             "run the benchmark")
    parser.add_argument("--dataset", "-d", default="amazon-beauty", help="dataset name (default: %(default)s)")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files, applied in order")
    parser.add_argument("--resume", default=None, metavar="FILE",
                        help="continue an interrupted run from its <checkpoint_dir>/<run>-resume.pth, with that run's config")
    parser.add_argument("--build_sids", action="store_true",
                        help="only build (or load) the semantic IDs of --dataset and report them; no training")
    parser.add_argument("--ship_sids", action="store_true",
                        help="with --build_sids: also write the SIDs beside the dataset's atomic files, where every "
                             "run with the same settings uses them, on any machine")
    serve = parser.add_argument_group("recommend from a saved run (--recommend=saved/<run>.pth)")
    serve.add_argument("--recommend", default=None, metavar="FILE", help="a saved run to recommend with")
    serve.add_argument("--history", default="", help="comma-separated raw item ids, oldest first")
    serve.add_argument("--top_k", type=int, default=10, help="items to recommend (default: %(default)s)")
    serve.add_argument("--unknown_items", default="skip", choices=("skip", "error"),
                       help="history ids the run does not know: skip them with a warning, or stop (default: skip)")
    serve.add_argument("--verbose", action="store_true",
                       help="also show the info logging on stderr (default: only warnings and errors; all of it goes to "
                            "the log file in log/<Model>/)")
    benchmark = parser.add_argument_group("benchmark (--model=A,B,...)")
    benchmark.add_argument("--seeds", default=None, help="comma-separated seeds; the table shows mean ± std")
    benchmark.add_argument("--seeded_rows", default=None, metavar="ROW,ROW",
                           help="rows that run every seed of --seeds; the others run the first (default: every row)")
    benchmark.add_argument("--report_only", action="store_true",
                           help="write the tables from the finished runs only; train nothing")
    benchmark.add_argument("--results_dir", default="results", help="where the tables go (default: %(default)s)")
    benchmark.add_argument("--tune_budget", default=None, metavar="TRIALS[,LIMIT]",
                           help="tune every model first with the same Ray Tune budget (e.g. 8 or 8,30m), then "
                                "benchmark the best configs")
    benchmark.add_argument("--params_dir", default=None,
                           help="folder of <Model>.test search spaces for --tune_budget "
                                "(default: the installed properties/hyper)")
    search = parser.add_argument_group("hyperparameter search with Ray Tune (--params_file=hyper.test)")
    search.add_argument("--params_file", default=None, help="RecBole-style search space; searches instead of one run")
    search.add_argument("--num_samples", type=int, default=10, help="trials (default: %(default)s)")
    search.add_argument("--tune_dir", default="tune", help="results folder (default: %(default)s)")
    search.add_argument("--tune_name", default=None,
                        help="search name, a subfolder of --tune_dir (default: <model>-<dataset>)")
    search.add_argument("--ray_address", default=None, help="a Ray cluster to run on (default: a local Ray)")
    search.add_argument("--cpus_per_trial", type=float, default=1,
                        help="CPUs per trial: a fraction up to 1 or a whole number (default: 1)")
    search.add_argument("--gpus_per_trial", type=float, default=None,
                        help="GPUs per trial: a fraction up to 1 or a whole number (default: 1 with CUDA, else 0)")
    search.add_argument("--max_concurrent_trials", type=int, default=None,
                        help="trials at a time (default: as many as the CPUs/GPUs allow)")
    search.add_argument("--no_early_stopping", action="store_true", help="no ASHA: every trial trains to the end")
    search.add_argument("--max_failures", type=int, default=2,
                        help="retries of a trial whose worker died (a node lost), each from the trial's last epoch "
                             "(default: %(default)s)")
    distributed = parser.add_argument_group("distributed training (RecBole's DDP)")
    distributed.add_argument("--nproc", type=int, default=1, help="processes on this machine (default: %(default)s)")
    distributed.add_argument("--world_size", type=int, default=-1, help="processes in all (default: nproc)")
    distributed.add_argument("--ip", default="localhost", help="address of rank 0 (default: %(default)s)")
    distributed.add_argument("--port", default="5678", help="port of rank 0 (default: %(default)s)")
    distributed.add_argument("--group_offset", type=int, default=0, help="this machine's first rank (default: 0)")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for arg in rest:
        key, sep, value = arg.removeprefix("--").partition("=")
        if not arg.startswith("--") or not sep or not key:
            parser.error(f"argument '{arg}' is not of the form --key=value")
        overrides[key] = value
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = _parse(sys.argv[1:] if argv is None else argv)
    config_files = args.config_files.split() if args.config_files else None
    try:
        # Imported here so that --help and argument errors answer without loading torch and RecBole.
        from recbole_diffgm.quick_start import build_item_sids, run_recbole_diffgm

        models = [name for name in args.model.split(",") if name]
        if args.recommend:
            from recbole_diffgm.recommend import recommend

            history = [item for item in args.history.split(",") if item]
            # stdout holds the result lines alone; the logging goes to the log file, and to stderr from warnings
            # up (all of it with --verbose). RecBole's Config reads sys.argv as config keys: these flags are none
            # (and it would warn of a bare --verbose as unused), so it sees none while the run loads.
            command_line, sys.argv = sys.argv, sys.argv[:1]
            try:
                items = recommend(args.recommend, history, args.top_k, args.unknown_items, verbose=args.verbose)
            finally:
                sys.argv = command_line
            return _print_lines(f"{rank}\t{item.item_id}\t{item.score:.4f}\t{item.title}\n"
                                for rank, item in enumerate(items, start=1))
        elif args.params_file:
            from recbole_diffgm.tuning import run_search

            run_search(args.model, args.dataset, args.params_file, config_files, overrides, args.num_samples,
                       args.tune_dir, args.tune_name, args.ray_address, args.cpus_per_trial, args.gpus_per_trial,
                       not args.no_early_stopping, max_concurrent_trials=args.max_concurrent_trials,
                       max_failures=args.max_failures)
        elif len(models) > 1 or args.seeds or args.tune_budget:
            from recbole_diffgm.benchmark import run_benchmark
            from recbole_diffgm.tuned_benchmark import run_tuned_benchmark

            seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
            # The command that trains the table (--report_only only writes it), quoted as a shell reads it back.
            command = shlex.join(["python", "run_recbole_diffgm.py",
                                  *(arg for arg in (sys.argv[1:] if argv is None else argv) if arg != "--report_only")])
            if args.tune_budget:
                run_tuned_benchmark(models, args.dataset, args.tune_budget, config_files, overrides, seeds,
                                    args.results_dir, command, args.params_dir, args.cpus_per_trial,
                                    args.gpus_per_trial, args.ray_address, args.max_concurrent_trials,
                                    args.max_failures)
            else:
                seeded_rows = args.seeded_rows.split(",") if args.seeded_rows else None
                run_benchmark(models, args.dataset, config_files, overrides, seeds, args.results_dir, command,
                              seeded_rows=seeded_rows, report_only=args.report_only)
        elif args.build_sids:
            build_item_sids(args.model, args.dataset, config_files, overrides, ship=args.ship_sids)
        else:
            from recbole_diffgm.benchmark import Row

            row = Row.parse(args.model)  # Model@recipe: the recipe's yaml, then the config files
            run_recbole_diffgm(row.model, args.dataset, row.config_files(config_files), overrides, nproc=args.nproc,
                               world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
                               resume_file=args.resume)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _print_lines(lines) -> int:
    """Write ``lines`` to stdout in one write; a reader that stops early (``| head -3``) ends the command quietly."""
    try:
        sys.stdout.write("".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # What is left in the buffer goes nowhere, instead of a second BrokenPipeError when Python exits.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
