"""Which datasets exist, and making the ones this plugin knows how to make."""

from __future__ import annotations

from pathlib import Path

from recbole_diffgm.data import amazon
from recbole_diffgm.errors import InputError


def local_datasets(data_root: Path) -> list[str]:
    """Datasets under ``data_root``: folders ``<name>/`` holding ``<name>.inter``."""
    if not data_root.is_dir():
        return []
    return sorted(path.parent.name for path in data_root.glob("*/*.inter") if path.stem == path.parent.name)


def ensure_dataset(config) -> None:
    """Check that the atomic files of ``config['dataset']`` exist; make a known Amazon category if not."""
    name = config["dataset"]
    dataset_dir = Path(config["data_path"])  # RecBole's Config has already appended the dataset name
    if (dataset_dir / f"{name}.inter").is_file():
        return
    if name in amazon.CATEGORIES:
        amazon.prepare(name, dataset_dir, config["amazon_raw_url"])
        return
    available = local_datasets(dataset_dir.parent)
    raise InputError(
        f"unknown dataset '{name}': no file {dataset_dir / (name + '.inter')}; "
        f"available in {dataset_dir.parent}: {', '.join(available) or 'none'}; "
        f"made on first use from the Amazon 2014 raw files: {', '.join(amazon.CATEGORIES)}"
    )
