"""Raw Amazon 2014 files -> atomic files (recbole_diffgm/data/amazon.py), offline."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys

import pytest
from conftest import BEAUTY, SCRIPT, TEST_DATA, read_atomic

from recbole_diffgm import InputError, run_recbole_diffgm
from recbole_diffgm.config import DATASET_DIR
from recbole_diffgm.data import amazon

RAW = TEST_DATA / "amazon-raw"
REVIEWS, META = (RAW / name for name in amazon.raw_file_names("Toys_and_Games"))


def test_convert_orders_users_and_cleans_item_text(tmp_path):
    stats = amazon.convert(REVIEWS, META, tmp_path, "toys")
    assert stats == amazon.ConversionStats(users=6, items=6, interactions=30, items_without_metadata=1)

    inter = read_atomic(tmp_path / "toys.inter")
    assert list(inter.columns) == list(amazon.INTER_HEADER)
    assert inter["user_id:token"].drop_duplicates().tolist() == ["U1", "U2", "U3", "U4", "U5", "U0"]
    # U0's reviews fall on days 0,1,2,3,0 for B0002..B0006: same-day ties are broken by ASIN.
    u0 = inter[inter["user_id:token"] == "U0"]
    assert u0["item_id:token"].tolist() == ["B0002", "B0006", "B0003", "B0004", "B0005"]
    assert u0["timestamp:float"].astype(int).is_monotonic_increasing

    item = read_atomic(tmp_path / "toys.item").set_index("item_id:token")
    assert list(item.columns) == list(amazon.ITEM_HEADER[1:])
    assert list(item.index) == ["B0001", "B0002", "B0003", "B0004", "B0005", "B0006"]  # not B9999
    assert item.loc["B0001"].tolist() == [
        "Wooden Train Set & Tracks", "Brio", "Toys & Games | Trains | Wood", "24.5", "Toys & Games", "1200.0"]
    assert item.loc["B0002", "title:token_seq"] == "The ''Big'' Puzzle"
    assert item.loc["B0003"].tolist() == ["Kite", "SkyCo", "Toys & Games", "", "", ""]
    assert item.loc["B0004", "title:token_seq"] == "Chess Set" and item.loc["B0004", "price:float"] == "30.0"
    assert item.loc["B0005", "sales_type:token"] == "Sports & Outdoors"
    assert item.loc["B0006"].tolist() == ["", "", "", "", "", ""]


def test_rebuilt_beauty_raw_files_convert_back_to_the_shipped_files(tmp_path):
    inter = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.inter")
    item = read_atomic(DATASET_DIR / BEAUTY / f"{BEAUTY}.item")
    reviews, meta = (tmp_path / name for name in amazon.raw_file_names("Beauty"))
    rows = inter.sort_values("item_id:token", kind="stable")  # the raw review file is ordered by ASIN
    with gzip.open(reviews, "wt", encoding="utf-8") as f:
        for user, asin, time in rows.itertuples(index=False):
            f.write(json.dumps({"reviewerID": user, "asin": asin, "unixReviewTime": int(time)}) + "\n")
    with gzip.open(meta, "wt", encoding="utf-8") as f:
        for asin, title, brand, categories, price, sales_type, sales_rank in item.itertuples(index=False):
            record = {"asin": asin, "title": title.replace("''", '"'), "brand": brand,
                      "categories": [categories.split(" | ")]}
            if price:
                record["price"] = float(price)
            if sales_type:
                record["salesRank"] = {sales_type: int(float(sales_rank))}
            f.write(repr(record) + "\n")

    amazon.convert(reviews, meta, tmp_path, BEAUTY)
    converted = read_atomic(tmp_path / f"{BEAUTY}.inter")
    sequences = lambda frame: frame.groupby("user_id:token")["item_id:token"].agg(list).to_dict()
    assert sequences(converted) == sequences(inter)
    shipped = item.sort_values("item_id:token").reset_index(drop=True)
    rebuilt = read_atomic(tmp_path / f"{BEAUTY}.item")
    # The shipped file left 6 HTML entities (2 titles, 4 brands, e.g. 'Kirk&#39;s Soap'); the converter
    # unescapes them, and agrees with the shipped file everywhere else.
    differs = rebuilt.ne(shipped)
    assert differs.sum().to_dict() == {column: {"title:token_seq": 2, "brand:token": 4}.get(column, 0)
                                       for column in rebuilt.columns}
    for column in ("title:token_seq", "brand:token"):
        assert rebuilt[column].equals(shipped[column].map(amazon.clean_text))


def test_a_review_file_that_is_not_5_core_is_refused(tmp_path):
    reviews = tmp_path / "reviews_X_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        f.write(json.dumps({"reviewerID": "U0", "asin": "B1", "unixReviewTime": 1}) + "\n")
    with pytest.raises(InputError, match=r"reviews_X_5.json.gz is not 5-core: 1 of 1 users and 1 of 1 items"):
        amazon.convert(reviews, META, tmp_path, "x")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"line 2: not a JSON object"),
        ('{"asin": "B1", "unixReviewTime": 1}', r"line 2: review has no field 'reviewerID'"),
        ('{"reviewerID": "U", "asin": "B1", "unixReviewTime": "soon"}', r"line 2: unixReviewTime 'soon' is not an integer"),
    ],
)
def test_a_bad_review_line_is_named(tmp_path, line, message):
    reviews = tmp_path / "reviews_X_5.json.gz"
    with gzip.open(reviews, "wt") as f:
        f.write(json.dumps({"reviewerID": "U0", "asin": "B1", "unixReviewTime": 1}) + "\n" + line + "\n")
    with pytest.raises(InputError, match=message):
        amazon.convert(reviews, META, tmp_path, "x")


def test_a_missing_category_is_downloaded_and_converted(fast_config, tmp_path):
    # A file:// URL stands in for the official server: the real download code runs, offline.
    data_root = tmp_path / "data"
    result = run_recbole_diffgm(
        "SASRec", "amazon-toys-games",
        config_dict={**fast_config, "data_path": str(data_root), "amazon_raw_url": RAW.as_uri(), "epochs": 1,
                     "topk": [3], "valid_metric": "NDCG@3"},  # 6 items: top-10 is undefined
    )
    assert (data_root / "amazon-toys-games" / "raw" / REVIEWS.name).read_bytes() == REVIEWS.read_bytes()
    assert read_atomic(data_root / "amazon-toys-games" / "amazon-toys-games.inter").shape == (30, 3)
    assert set(result["test_result"]) == {"recall@3", "ndcg@3"}


def test_an_unreachable_download_says_which_files_to_put_where(tmp_path):
    data_root = tmp_path / "data"
    (data_root / "amazon-sports-outdoors" / "raw").mkdir(parents=True)
    shutil.copy(REVIEWS, data_root / "amazon-sports-outdoors" / "raw" / "reviews_Sports_and_Outdoors_5.json.gz")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset=amazon-sports-outdoors",
         f"--data_path={data_root}", f"--amazon_raw_url={(tmp_path / 'offline').as_uri()}"],
        check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 2
    *progress, error = done.stderr.splitlines()  # progress: the "downloading <url>" log line
    assert not any(line.startswith("error") for line in progress), done.stderr
    raw_dir = data_root / "amazon-sports-outdoors" / "raw"
    assert error.startswith("error: dataset 'amazon-sports-outdoors' is not in ")
    assert "meta_Sports_and_Outdoors.json.gz could not be downloaded" in error
    assert error.endswith(
        f"put reviews_Sports_and_Outdoors_5.json.gz and meta_Sports_and_Outdoors.json.gz into {raw_dir}/ and run again")
    assert not list(raw_dir.glob(".meta*"))  # no partial download left behind
