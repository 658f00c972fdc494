"""Writes the small raw-format Amazon 2014 fixtures in ``amazon-raw/`` (run once; the output is committed).

Six users and six toys: every user reviews five toys and every toy has five reviews (5-core), with
same-day ties, a review file ordered by ASIN like the real one, HTML entities, double quotes, newlines,
repeated category names, a missing brand and price, and one reviewed item with no metadata line.
"""

import gzip
import json
from pathlib import Path

OUT = Path(__file__).parent / "amazon-raw"
ASINS = ["B0001", "B0002", "B0003", "B0004", "B0005", "B0006"]
DAY = 86400


def reviews():
    # User u skips toy u; toys are reviewed on days that tie for some users.
    for user, skipped in enumerate(ASINS):
        for rank, asin in enumerate(a for a in ASINS if a != skipped):
            yield {"reviewerID": f"U{user}", "asin": asin, "unixReviewTime": 1_300_000_000 // DAY * DAY
                   + DAY * ((rank * (user + 1)) % 4), "overall": 5.0, "reviewText": "fine"}


META = [
    {"asin": "B0001", "title": "Wooden   Train\nSet &amp; Tracks", "brand": "Brio", "price": 24.5,
     "salesRank": {"Toys & Games": 1200}, "categories": [["Toys & Games", "Trains"], ["Toys & Games", "Wood"]]},
    {"asin": "B0002", "title": 'The "Big" Puzzle', "brand": "", "price": 9.99,
     "salesRank": {"Toys & Games": 55}, "categories": [["Toys & Games", "Puzzles"]]},
    {"asin": "B0003", "title": "Kite", "brand": "SkyCo", "categories": [["Toys & Games"]]},
    {"asin": "B0004", "title": "Chess\tSet", "brand": "Staunton", "price": 30,
     "salesRank": {}, "categories": [["Toys & Games", "Games", "Board Games"]]},
    {"asin": "B0005", "title": "Yo-yo", "brand": "Duncan", "price": 3.25,
     "salesRank": {"Sports &amp; Outdoors": 7}, "categories": [["Toys & Games", "Yo-yos"]]},
    {"asin": "B9999", "title": "Not reviewed", "categories": [["Toys & Games"]]},
]  # B0006 is reviewed but has no metadata line


def main():
    OUT.mkdir(exist_ok=True)
    rows = sorted(reviews(), key=lambda r: r["asin"])  # the real review files are ordered by ASIN
    with gzip.open(OUT / "reviews_Toys_and_Games_5.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    with gzip.open(OUT / "meta_Toys_and_Games.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(repr(record) + "\n" for record in META)  # Python literals, as in the real files


if __name__ == "__main__":
    main()
