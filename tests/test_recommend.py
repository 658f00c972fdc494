"""Recommending from a saved run, unknown history ids, and cold start: a new item gets a SID without retraining."""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import NAME, SCRIPT, read_atomic

from recbole_diffgm import InputError, Recommender, run_recbole_diffgm
from recbole_diffgm.cli import main


@pytest.fixture
def saved_run(tiny_config, tmp_path):
    config = {**tiny_config, "epochs": 3, "sid_cache_dir": str(tmp_path / "sid_cache")}
    return run_recbole_diffgm("DiffGM", NAME, config_dict=config)["model_file"], tmp_path / "data" / NAME


def test_recommendations_have_ids_titles_and_skip_the_history(saved_run):
    model_file, folder = saved_run
    items = read_atomic(folder / f"{NAME}.item").set_index("item_id:token")
    history = list(items.index[10:14])
    recommendations = Recommender(model_file).recommend(history, top_k=5)
    assert len(recommendations) == 5 and not {item.item_id for item in recommendations} & set(history)
    assert [item.title for item in recommendations] == [items.loc[item.item_id, "title:token_seq"]
                                                       for item in recommendations]
    scores = [item.score for item in recommendations]
    assert scores == sorted(scores, reverse=True)


def test_unknown_history_ids_are_skipped_with_a_warning_or_refused(saved_run, caplog):
    model_file, folder = saved_run
    known = list(read_atomic(folder / f"{NAME}.item")["item_id:token"][10:13])
    recommender = Recommender(model_file)
    with caplog.at_level(logging.WARNING):
        skipped = recommender.recommend(["NOPE", *known], top_k=5)
    assert "history items unknown to the run's dataset, skipped: NOPE" in caplog.text
    assert skipped == recommender.recommend(known, top_k=5)
    with pytest.raises(InputError, match=f"history items unknown to the run's dataset '{NAME}': NOPE"):
        recommender.recommend(["NOPE", *known], unknown_items="error")


def test_a_new_item_gets_a_sid_from_its_text_and_is_recommended_without_retraining(saved_run, caplog):
    model_file, folder = saved_run
    weights_before = (folder.parents[1] / "saved" / model_file.split("/")[-1]).read_bytes()
    history = list(read_atomic(folder / f"{NAME}.item")["item_id:token"][10:14])
    top = Recommender(model_file).recommend(history, top_k=1)[0]
    # A new catalogue row: the text of the top recommendation under a new id, and one with a text of its own.
    item_file = folder / f"{NAME}.item"
    rows = item_file.read_text().splitlines()
    copy = next(row for row in rows if row.split("\t")[0] == top.item_id).split("\t")
    own = rows[5].split("\t")
    own[1] = "Rose water facial mist with aloe"
    item_file.write_text("\n".join([*rows, "\t".join(["NEWCOPY", *copy[1:]]), "\t".join(["NEWOWN", *own[1:]])]) + "\n")

    with caplog.at_level(logging.INFO):
        recommender = Recommender(model_file)
    assert "2 items are new since training: their SIDs come from their text" in caplog.text
    assert "refitting" not in caplog.text  # the quantizer fitted at training time, from the cache
    token_ids = recommender.dataset.field2token_id[recommender.item_field]
    item_sid = recommender.dataset.item_sid
    assert torch.equal(item_sid[token_ids["NEWCOPY"]], item_sid[token_ids[top.item_id]])
    assert ((item_sid[token_ids["NEWOWN"]] >= 0) & (item_sid[token_ids["NEWOWN"]] < 8)).all()
    recommended = [item.item_id for item in recommender.recommend(history, top_k=5)]
    assert recommended[0] == top.item_id and "NEWCOPY" in recommended
    assert (folder.parents[1] / "saved" / model_file.split("/")[-1]).read_bytes() == weights_before


def test_a_lost_quantizer_is_refitted_to_the_same_sids(saved_run, caplog):
    model_file, folder = saved_run
    rows = (folder / f"{NAME}.item").read_text().splitlines()
    (folder / f"{NAME}.item").write_text("\n".join([*rows, "\t".join(["NEWCOPY", *rows[6].split("\t")[1:]])]) + "\n")
    for state in (folder.parents[1] / "sid_cache").glob("quantizer-*.npz"):
        state.unlink()
    with caplog.at_level(logging.INFO):
        recommender = Recommender(model_file)
    assert "refitting the opq quantizer of 48 items" in caplog.text
    token_ids = recommender.dataset.field2token_id[recommender.item_field]
    original = rows[6].split("\t")[0]
    assert torch.equal(recommender.dataset.item_sid[token_ids["NEWCOPY"]], recommender.dataset.item_sid[token_ids[original]])


def test_the_command_line_prints_ranked_recommendations(saved_run, capsys):
    model_file, folder = saved_run
    history = list(read_atomic(folder / f"{NAME}.item")["item_id:token"][10:14])
    assert main(["--recommend=" + model_file, "--history=" + ",".join(history), "--top_k=3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["1", "2", "3"]


INFO_LINE = re.compile(r"\bINFO\b")


def run_script(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], check=False, capture_output=True, text=True, timeout=600, cwd=cwd)


def new_log_text(log_dir, before: set) -> str:
    return "".join(path.read_text() for path in sorted(set(log_dir.glob("*.log")) - before))


def test_the_command_line_prints_the_recommendations_alone_and_logs_to_the_log_file(saved_run, tmp_path):
    model_file, folder = saved_run
    titles = read_atomic(folder / f"{NAME}.item").set_index("item_id:token")["title:token_seq"]
    known = list(titles.index[10:14])
    command = [str(SCRIPT), "--recommend=" + model_file, "--history=" + ",".join(["NOPE", *known]), "--top_k=5"]
    log_dir = tmp_path / "log" / "DiffGM"
    before = set(log_dir.glob("*.log"))

    done = run_script(*command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # stdout: the result lines and nothing else, each rank, item id, score and title.
    lines = done.stdout.splitlines()
    assert done.stdout == "".join(line + "\n" for line in lines) and len(lines) == 5, done.stdout
    rows = [line.split("\t") for line in lines]
    assert all(len(row) == 4 for row in rows), lines
    assert [row[0] for row in rows] == ["1", "2", "3", "4", "5"]
    assert all(row[1] in titles.index and row[1] not in known for row in rows)
    assert [row[3] for row in rows] == [titles[row[1]] for row in rows]
    scores = [float(row[2]) for row in rows]
    assert scores == sorted(scores, reverse=True)
    # stderr: warnings only (the unknown history item), no RecBole info logging, no Python library warnings.
    assert "WARNING  history items unknown to the run's dataset, skipped: NOPE" in done.stderr
    assert not INFO_LINE.search(done.stderr) and "The number of users" not in done.stderr, done.stderr
    assert "FutureWarning" not in done.stderr and "will not be used in RecBole" not in done.stderr, done.stderr
    # The log file has all of it, as a normal run writes it.
    log = new_log_text(log_dir, before)
    assert INFO_LINE.search(log) and "The number of users" in log and "skipped: NOPE" in log

    verbose = run_script(*command, "--verbose", cwd=tmp_path)
    assert verbose.returncode == 0 and verbose.stdout == done.stdout, verbose.stderr[-3000:]
    assert INFO_LINE.search(verbose.stderr) and "The number of users" in verbose.stderr
    assert "skipped: NOPE" in verbose.stderr and "will not be used in RecBole" not in verbose.stderr


def test_the_command_line_is_pipeable(saved_run, tmp_path):
    model_file, folder = saved_run
    history = ",".join(read_atomic(folder / f"{NAME}.item")["item_id:token"][10:14])
    command = [sys.executable, str(SCRIPT), "--recommend=" + model_file, "--history=" + history, "--top_k=10"]
    piped = subprocess.run(shlex.join(command) + " | head -3", shell=True, check=False, capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert [line.split("\t")[0] for line in piped.stdout.splitlines()] == ["1", "2", "3"], piped.stderr[-3000:]
    # A reader gone before the results are written (what head does once it has its lines): no traceback.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=600) == 0 and "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_a_recommender_shows_only_warnings_where_logging_is_not_configured(saved_run, tmp_path):
    model_file, folder = saved_run
    history = ",".join(["NOPE", *read_atomic(folder / f"{NAME}.item")["item_id:token"][10:14]])
    script = textwrap.dedent("""
        import logging, sys
        if sys.argv[3] == "configured":
            logging.basicConfig(level=logging.INFO, format="app %(levelname)s %(message)s")
        from recbole_diffgm import Recommender
        print(len(Recommender(sys.argv[1]).recommend(sys.argv[2].split(","), top_k=3)))
    """)
    log_dir = tmp_path / "log" / "DiffGM"
    before = set(log_dir.glob("*.log"))
    quiet = run_script("-c", script, model_file, history, "not configured", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "3\n", quiet.stderr[-3000:]
    assert "WARNING  history items unknown to the run's dataset, skipped: NOPE" in quiet.stderr
    assert not INFO_LINE.search(quiet.stderr) and "FutureWarning" not in quiet.stderr, quiet.stderr
    assert "The number of users" in new_log_text(log_dir, before)
    # Logging the application configured is left as it is: its handler, its level, its format.
    configured = run_script("-c", script, model_file, history, "configured", cwd=tmp_path)
    assert configured.returncode == 0 and configured.stdout == "3\n", configured.stderr[-3000:]
    assert "app INFO " in configured.stderr and "The number of users" in configured.stderr
    assert "app WARNING history items unknown to the run's dataset, skipped: NOPE" in configured.stderr


def test_a_new_item_under_disambiguate_continues_its_sids_numbering(tiny_config, tmp_path):
    config = {**tiny_config, "epochs": 1, "sid_collision": "disambiguate", "sid_cache_dir": str(tmp_path / "sid_cache")}
    model_file = run_recbole_diffgm("DiffGM", NAME, config_dict=config)["model_file"]
    item_file = tmp_path / "data" / NAME / f"{NAME}.item"
    rows = item_file.read_text().splitlines()
    first = rows[1].split("\t")  # item 0, whose text item 1 repeats: their SID's group has indices 0 and 1
    item_file.write_text("\n".join([*rows, *("\t".join([name, *first[1:]]) for name in ("NEW1", "NEW2"))]) + "\n")
    recommender = Recommender(model_file)
    token_ids = recommender.dataset.field2token_id[recommender.item_field]
    item_sid = recommender.dataset.item_sid
    group = item_sid[token_ids[first[0]]][:-1]
    assert torch.equal(item_sid[token_ids["NEW1"]], torch.cat([group, torch.tensor([2])]))
    assert torch.equal(item_sid[token_ids["NEW2"]], torch.cat([group, torch.tensor([3])]))
    assert len(item_sid[1:].unique(dim=0)) == len(item_sid) - 1  # still one item per SID
    assert recommender.recommend([first[0]], top_k=5)


FAMILIES = ("Rose petal lip balm", "Tea tree oil shampoo", "Argan oil hair mask", "Charcoal face cleanser",
            "Vanilla body lotion", "Lavender bath salts", "Coconut nail polish", "Mint toothpaste whitening")


def write_families(root, shades: int = 6) -> None:
    """Eight product families of ``shades`` items each, titled "<family>, shade <k>"; each user buys the items of
    one family, in an order of its own: the next item is always one of the history's family."""
    folder = root / "families"
    folder.mkdir(parents=True)
    items = [(f"F{f}S{k}", f"{family}, shade {k}") for f, family in enumerate(FAMILIES) for k in range(shades)]
    (folder / "families.item").write_text("item_id:token\ttitle:token_seq\n"
                                          + "".join(f"{item}\t{title}\n" for item, title in items))
    generator = torch.Generator().manual_seed(0)
    lines = ["user_id:token\titem_id:token\ttimestamp:float\n"]
    for user in range(96):
        family = user % len(FAMILIES)
        order = torch.randperm(shades, generator=generator).tolist()
        lines += [f"u{user}\tF{family}S{k}\t{t}\n" for t, k in enumerate(order)]
    (folder / "families.inter").write_text("".join(lines))


def test_a_new_item_whose_text_makes_it_the_obvious_next_one_reaches_the_top_10(tiny_config, tmp_path):
    write_families(tmp_path / "families-data")
    config = {**tiny_config, "data_path": str(tmp_path / "families-data"), "item_text_fields": {"title": "Title"},
              "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title"]},
              "epochs": 60, "train_per_position": True, "sid_cache_dir": str(tmp_path / "sid_cache")}
    model_file = run_recbole_diffgm("DiffGM", "families", config_dict=config)["model_file"]
    item_file = tmp_path / "families-data" / "families" / "families.item"
    item_file.write_text(item_file.read_text() + "NEWROSE\tRose petal lip balm, shade 9\n")  # .inter unchanged
    recommender = Recommender(model_file)
    history = ["F0S0", "F0S1", "F0S2", "F0S3"]
    recommended = [item.item_id for item in recommender.recommend(history, top_k=10)]
    # The family's two other items first (the model learned the families), the new one within the top 10 of 45
    # (5th on an AMD EPYC, with one thread or two).
    assert set(recommended[:2]) == {"F0S4", "F0S5"} and "NEWROSE" in recommended
