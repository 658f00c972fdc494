"""A regular (non-editable) install finds its properties and data inside the installed package."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).parents[1]


def test_regular_install_reads_properties_and_data_from_the_package(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    check = textwrap.dedent(
        """
        import recbole_diffgm
        from recbole_diffgm.config import DATASET_DIR, PROPERTIES_DIR, Config
        print(recbole_diffgm.__file__)
        print(PROPERTIES_DIR)
        print(DATASET_DIR)
        config = Config("SASRec", "amazon-beauty")
        print(config["MAX_ITEM_LIST_LENGTH"], config["valid_metric"], config["amazon_raw_url"])
        print((DATASET_DIR / "amazon-beauty" / "amazon-beauty.inter").stat().st_size)
        """
    )
    # Run outside the source tree, with the installed copy first on the path.
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    module, properties, data, settings, size = done.stdout.splitlines()
    for path in (module, properties, data):
        assert Path(path).is_relative_to(target), path
    assert settings.startswith("50 NDCG@10 http")
    assert int(size) == (REPO / "dataset" / "amazon-beauty" / "amazon-beauty.inter").stat().st_size
