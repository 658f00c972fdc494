"""Bad input through the command line: one exact line on stderr, exit status 2, caches and results untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from conftest import NAME, write_tiny

from recbole_diffgm.cli import main
from recbole_diffgm.data import amazon
from recbole_diffgm.utils import available_models

LOAD_COL = "--load_col={'inter': ['user_id', 'item_id', 'timestamp'], 'item': ['item_id', 'title', 'price']}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny dataset, a built SID cache and a saved result, shared by every case (each restores the files)."""
    root = tmp_path_factory.mktemp("bad-input")
    write_tiny(root / "data")
    assert main([*base_args(root), "--build_sids"]) == 0
    (root / "saved").mkdir(exist_ok=True)
    (root / "saved" / "result.pth").write_bytes(b"a finished run")
    return root


def base_args(root: Path, model: str = "DiffGM") -> list[str]:
    return [f"--model={model}", f"--dataset={NAME}", f"--data_path={root / 'data'}", f"--checkpoint_dir={root / 'saved'}",
            f"--sid_cache_dir={root / 'cache'}", "--codebook_size=8", "--sent_emb_pca=16", "--topk=[5]",
            "--valid_metric=NDCG@5", "--epochs=1", LOAD_COL]


def snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for folder in ("cache", "saved") for path in sorted((root / folder).rglob("*")) if path.is_file()}


def atomic(root: Path, suffix: str) -> Path:
    return root / "data" / NAME / f"{NAME}.{suffix}"


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def replace_header(old: str, new: str):
    return lambda lines: lines.__setitem__(0, lines[0].replace(old, new))


def other_settings_cache(root: Path) -> None:
    """Give the intact SID cache file the key of other settings (as if copied from another run)."""
    (path,) = (root / "cache").glob("sid-*.npz")
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["key"] = np.array("f" * 64)
    with path.open("wb") as file:
        np.savez(file, **arrays)


INTER, ITEM = "{inter}", "{item}"
CASES = [
    # (case, file edits, extra arguments, the message after "error: ")
    ("missing column", [("inter", lambda lines: [lines.__setitem__(i, line.rsplit("\t", 1)[0])
                                                 for i, line in enumerate(lines)])], [],
     f"{INTER}: no column 'timestamp' (columns: user_id:token, item_id:token); set load_col to the columns to load"),
    ("misspelled column", [("inter", replace_header("item_id:token", "itemid:token"))], [],
     (f"{INTER}: no column 'item_id' (columns: user_id:token, itemid:token, timestamp:float); set load_col to the "
      "columns to load (did you mean 'itemid'?)")),
    ("wrong type", [("inter", lambda lines: lines.__setitem__(3, lines[3].rsplit("\t", 1)[0] + "\tyesterday"))], [],
     f"{INTER}, line 4: field 'timestamp:float' must be a number, got 'yesterday'"),
    ("ragged row, extra field", [("inter", lambda lines: lines.__setitem__(5, lines[5] + "\t5"))], [],
     f"{INTER}, line 6: 4 fields, but the header has 3"),
    ("ragged row, missing field", [("item", lambda lines: lines.__setitem__(7, lines[7].split("\t")[0]))], [],
     f"{ITEM}, line 8: 1 fields, but the header has 7"),
    ("empty file", [("inter", lambda lines: lines.clear())], [],
     f"{INTER}: empty file; an atomic file starts with a header of name:type columns"),
    ("duplicate header", [("inter", replace_header("timestamp:float", "item_id:token"))], [],
     f"{INTER}: column 'item_id' appears more than once in the header"),
    ("header without type", [("inter", replace_header("timestamp:float", "timestamp"))], [],
     f"{INTER}: header column 'timestamp' has no type; write it as name:type (token, token_seq, float, float_seq)"),
    ("unknown type", [("inter", replace_header("timestamp:float", "timestamp:date"))], [],
     (f"{INTER}: header column 'timestamp:date' has an unknown type 'date'; use one of token, token_seq, float, "
     "float_seq")),
    ("non-UTF-8 bytes", [("item", "latin-1")], [],
     f"{ITEM}, line 3: not UTF-8 (byte 0xe9 at column {{latin_column}}); save the file as UTF-8"),
    ("item file without text fields", [("item", lambda lines: [lines.__setitem__(i, line.split("\t")[0])
                                                               for i, line in enumerate(lines)])], [],
     f"{ITEM}: no column 'title' (columns: item_id:token); set load_col to the columns to load"),
    ("item text field not in the item file", [], ["--item_text_fields=['title','color']"],
     (f"{ITEM}: no column 'color' (columns: item_id, title, brand, categories, price, sales_type, sales_rank); set "
      "item_text_fields to the columns to embed")),
    ("duplicate item rows", [("item", lambda lines: lines.__setitem__(6, lines[5]))], [],
     f"{ITEM}: item '{{duplicated}}' appears in more than one row"),
    ("empty after filtering", [], ["--user_inter_num_interval=[100,inf)"],
     (f"dataset '{NAME}': no interactions are left after filtering (user_inter_num_interval [100,inf), "
     "item_inter_num_interval [0,inf)); loosen these settings")),
    ("n_digit 0", [], ["--n_digit=0"], "n_digit must be at least 1, got 0"),
    ("codebook not a power of two", [], ["--codebook_size=12"], "codebook_size must be a power of two for PQ codes, got 12"),
    ("beam smaller than top-k", [], ["--valid_beam_size=3"],
     ("valid_beam_size 3 is smaller than the largest topk 5: the beam must reach at least as many SIDs as the "
     "metrics rank")),
    ("unknown quantizer", [], ["--sid_quantizer=vq"], "unknown sid_quantizer 'vq'; choose one of opq, rq_kmeans, rq_vae, random"),
    ("unknown masking strategy", [], ["--masking_strategy=diagonal"],
     "unknown masking_strategy 'diagonal'; choose one of guided, sequential, random"),
    ("unknown decoding mode", [], ["--decode_mode=fast"], "unknown decode_mode 'fast'; choose one of cpd, one_pass"),
    ("mask probability out of range", [], ["--masking_strategy=random", "--mask_prob=0"], "mask_prob must be in (0, 1], got 0"),
    ("PCA larger than the embedding", [], ["--sent_emb_pca=512"],
     "sent_emb_pca 512 is larger than the embeddings allow (384 dims, 48 items)"),
    ("unknown model", [], ["--model=DiffGN"], f"unknown model 'DiffGN'; available models: {', '.join(available_models())}"),
    ("unknown dataset", [], ["--dataset=sid-tinny"],
     ("unknown dataset 'sid-tinny': no file {data}/sid-tinny/sid-tinny.inter; available in {data}: sid-tiny; made on "
     f"first use from the Amazon 2014 raw files: {', '.join(amazon.CATEGORIES)}")),
    ("config file not found", [], ["--config_files=nowhere.yaml"], "config file not found: nowhere.yaml"),
    ("SID cache of other settings", [("cache", other_settings_cache)], [],
     ("{sid_cache}: a cache written for other settings (key ffffffffffff..., this run's {sid_key}...); move it away "
     "or set sid_cache_dir to another folder")),
]


@pytest.mark.parametrize(("edits", "extra", "message"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_gets_one_exact_line_and_changes_nothing(workspace, edits, extra, message, capsys):
    originals = {suffix: atomic(workspace, suffix).read_bytes() for suffix in ("inter", "item")}
    (sid_cache,) = (workspace / "cache").glob("sid-*.npz")
    sid_cache_bytes = sid_cache.read_bytes()
    with np.load(sid_cache) as stored:
        sid_key = str(stored["key"])[:12]
    item_ids = [line.split("\t")[0] for line in atomic(workspace, "item").read_text().splitlines()]
    duplicated, latin_column = item_ids[5], len(item_ids[2]) + len("\tCaf") + 1
    for target, edit in edits:
        if target == "cache":
            edit(workspace)
        elif edit == "latin-1":  # an accented title saved in Latin-1
            edit_lines(atomic(workspace, target), lambda lines: lines.__setitem__(2, lines[2].replace("\t", "\tCaf\u00e9 ", 1)))
            atomic(workspace, target).write_bytes(atomic(workspace, target).read_text().encode("latin-1"))
        else:
            edit_lines(atomic(workspace, target), edit)
    before = snapshot(workspace)
    capsys.readouterr()
    try:
        status = main([*base_args(workspace), *extra])
    finally:
        for suffix, data in originals.items():
            atomic(workspace, suffix).write_bytes(data)
    stderr = capsys.readouterr().err
    assert snapshot(workspace) == before  # no cache or result written, replaced or removed
    sid_cache.write_bytes(sid_cache_bytes)
    expected = message.format(inter=atomic(workspace, "inter"), item=atomic(workspace, "item"),
                              data=workspace / "data", sid_cache=sid_cache, sid_key=sid_key, duplicated=duplicated,
                              latin_column=latin_column)
    assert status == 2
    assert [line for line in stderr.splitlines() if line.startswith("error: ")] == [f"error: {expected}"]
    assert stderr.rstrip("\n").endswith(f"error: {expected}")
