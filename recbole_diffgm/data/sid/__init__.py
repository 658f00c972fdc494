"""Semantic IDs: item texts -> sentence embeddings -> quantizer -> collision policy, cached by content.

``build_sids(texts, config)`` is the whole stage. Both caches (embeddings, then codes) are keyed by
everything that determines them and written atomically; a cache that is unreadable or does not match
its key is rebuilt, never used.

A dataset may ship its SIDs (``shipped_sids_file``: ``<dataset>.sids-<key>.npz`` beside its atomic files, the
quantizer's codes before the collision policy and its fitted state, keyed like the codes): they are used
instead of a build whenever the texts, text model and quantizer settings match. Text embeddings and faiss's
k-means differ in their last bits between CPUs and library versions, and the codes with them (the same Beauty
settings gave 9,573, 9,663 and 9,471 unique SIDs on three machines), so shipped SIDs are what makes a table
reproducible; ``ship_sids`` writes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from recbole_diffgm.data.sid.collisions import (
    CollisionReport,
    apply_collision_policy,
    collision_report,
    reassign,
)
from recbole_diffgm.data.sid.embed import (
    cache_key,
    embed_texts,
    load_array,
    load_arrays,
    model_identity,
    save_array,
    save_arrays,
)
from recbole_diffgm.data.sid.quantizers import QuantizerSettings, make_quantizer
from recbole_diffgm.errors import InputError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SIDSettings:
    """The config keys of the SID stage (documented in properties/overall.yaml)."""

    sent_emb_model: str
    sent_emb_batch_size: int
    sent_emb_device: str | None
    sid_quantizer: str
    sid_collision: str
    quantizer: QuantizerSettings
    cache_dir: Path

    @classmethod
    def from_config(cls, config) -> SIDSettings:
        return cls(
            sent_emb_model=str(config["sent_emb_model"]),
            sent_emb_batch_size=int(config["sent_emb_batch_size"]),
            sent_emb_device=config["sent_emb_device"],
            sid_quantizer=config["sid_quantizer"],
            sid_collision=config["sid_collision"],
            quantizer=QuantizerSettings(
                n_digit=int(config["n_digit"]),
                codebook_size=int(config["codebook_size"]),
                seed=int(config["seed"]),
                sent_emb_pca=int(config["sent_emb_pca"]),
                opq_iterations=int(config["opq_iterations"]),
                kmeans_iterations=int(config["kmeans_iterations"]),
                rq_vae=dict(config["rq_vae"] or {}),
            ),
            cache_dir=Path(config["sid_cache_dir"] or Path(config["checkpoint_dir"]) / "sid_cache"),
        )

    def codes_key(self, texts: list[str]) -> str:
        """Digest of everything that determines the codes: texts, text model, quantizer and policy."""
        return self._digest(texts, collision=True)

    def quantizer_key(self, texts: list[str]) -> str:
        """Digest of what determines the quantizer's codes before the collision policy (shipped SIDs)."""
        return self._digest(texts, collision=False)

    def _digest(self, texts: list[str], collision: bool) -> str:
        quantizer = asdict(self.quantizer)
        if self.sid_quantizer != "opq":
            quantizer.pop("sent_emb_pca")
            quantizer.pop("opq_iterations")
        if self.sid_quantizer != "rq_vae":
            quantizer.pop("rq_vae")
        description = {"embeddings": cache_key(texts, model_identity(self.sent_emb_model)),
                       "quantizer": self.sid_quantizer, "settings": quantizer}
        if collision:
            description["collision"] = self.sid_collision
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class SIDResult:
    codes: np.ndarray  # [n_items, n_digit] int64, one row per text
    report: CollisionReport  # of the quantizer's codes, before the collision policy
    key: str
    seconds: dict[str, float]  # time per step; empty when loaded from the cache or shipped
    source: str = "built"  # built, cache, or the shipped file's path


def shipped_sids_file(dataset_dir: Path, dataset: str, settings: SIDSettings, texts: list[str]) -> Path:
    """Where ``dataset`` ships the SIDs of ``settings`` (whether or not it does)."""
    return Path(dataset_dir) / f"{dataset}.sids-{settings.sid_quantizer}-{settings.quantizer_key(texts)[:16]}.npz"


def ship_sids(texts: list[str], settings: SIDSettings, shipped: Path, show_progress: bool = True) -> Path:
    """Build the quantizer's codes of ``texts`` (or take them from the cache, or from ``shipped`` itself) and write
    them with the fitted state to ``shipped``, for every later run with these settings to use as they are; with
    ``sid_collision: reassign`` the reassigned codes too."""
    key = settings.codes_key(texts)
    arrays = _load_shipped(shipped, settings, texts) or {}  # SIDs shipped for another policy stay
    if settings.sid_collision == "reassign":
        arrays["reassigned"] = build_sids(texts, settings, show_progress, shipped).codes
        settings = replace(settings, sid_collision="keep")  # the quantizer's own codes and state, shipped beside
        key = settings.codes_key(texts)
    codes = build_sids(texts, settings, show_progress, shipped).codes[:, :settings.quantizer.n_digit]
    state = load_arrays(_quantizer_path(settings, key), key)
    save_arrays(shipped, {**arrays, "codes": codes, **{f"state.{name}": value for name, value in state.items()}},
                settings.quantizer_key(texts))
    shipped.chmod(0o644)  # data to publish, not a private cache
    logger.info(f"semantic IDs of {len(texts):,} items shipped to {shipped}")
    return shipped


def _load_shipped(shipped: Path | None, settings: SIDSettings, texts: list[str]) -> dict | None:
    if shipped is None or not shipped.is_file():
        return None
    return load_arrays(shipped, settings.quantizer_key(texts))


def build_sids(texts: list[str], settings: SIDSettings, show_progress: bool = True,
               shipped: Path | None = None) -> SIDResult:
    """The semantic IDs of ``texts``: the ``shipped`` ones (``shipped_sids_file``) when they exist for these
    settings, else from the cache when it has them, else built."""
    key = settings.codes_key(texts)
    arrays = _load_shipped(shipped, settings, texts)
    if arrays is not None:
        codes, reassigned = arrays.pop("codes"), arrays.pop("reassigned", None)
        state = {name.removeprefix("state."): value for name, value in arrays.items()}
        quantizer_path = _quantizer_path(settings, key)
        if not quantizer_path.is_file():  # where encode_new_items looks for the fitted quantizer
            save_arrays(quantizer_path, state, key)
        logger.info(f"semantic IDs of {len(texts):,} items: the ones shipped with the dataset, {shipped}")
        if settings.sid_collision == "reassign" and reassigned is not None:
            policy_codes = reassigned
        else:
            quantizer = make_quantizer(settings.sid_quantizer, settings.quantizer)
            quantizer.state = state
            policy_codes = _apply_policy(codes, texts, settings, quantizer, show_progress)
        return SIDResult(policy_codes, collision_report(codes), key, {}, str(shipped))
    path = settings.cache_dir / f"sid-{key[:24]}.npz"
    cached = load_array(path, key)
    if cached is not None:
        logger.info(f"semantic IDs of {len(texts):,} items loaded from {path}")
        n_digit = settings.quantizer.n_digit
        return SIDResult(cached, collision_report(cached[:, :n_digit]), key, {}, "cache")

    seconds = {}
    start = time.perf_counter()
    embeddings = embed_texts(texts, settings.sent_emb_model, settings.sent_emb_batch_size, settings.sent_emb_device,
                             settings.cache_dir, show_progress)
    seconds["embedding"] = time.perf_counter() - start
    start = time.perf_counter()
    quantizer = make_quantizer(settings.sid_quantizer, settings.quantizer)
    codes = quantizer.quantize(embeddings).astype(np.int64)
    seconds["quantizer"] = time.perf_counter() - start
    report = collision_report(codes)
    codes = _apply_policy(codes, texts, settings, quantizer, show_progress, embeddings)
    save_arrays(_quantizer_path(settings, key), quantizer.state, key)
    save_array(path, codes, key)
    logger.info(f"semantic IDs ({settings.sid_quantizer}, {settings.quantizer.n_digit} digits x "
                f"{settings.quantizer.codebook_size} codes) written to {path} "
                f"[embedding {seconds['embedding']:.1f} s, quantizer {seconds['quantizer']:.1f} s]")
    return SIDResult(codes, report, key, seconds)


def _apply_policy(codes: np.ndarray, texts: list[str], settings: SIDSettings, quantizer, show_progress: bool,
                  embeddings: np.ndarray | None = None) -> np.ndarray:
    """``sid_collision`` on the quantizer's ``codes``; ``reassign`` weighs moves by the fitted quantizer's error."""
    if settings.sid_collision != "reassign":
        return apply_collision_policy(codes, settings.sid_collision)
    if not hasattr(quantizer, "digit_costs"):
        raise InputError(f"sid_collision reassign moves parallel digits: it needs sid_quantizer opq, not "
                         f"{settings.sid_quantizer}")
    if embeddings is None:
        embeddings = embed_texts(texts, settings.sent_emb_model, settings.sent_emb_batch_size,
                                 settings.sent_emb_device, settings.cache_dir, show_progress)
    costs = quantizer.digit_costs(embeddings)
    reassigned, added = reassign(codes, costs)
    error = np.take_along_axis(costs, codes[..., None], axis=2).sum(axis=(1, 2))
    moved = added > 0
    logger.info(f"sid_collision reassign: {int((reassigned != codes).any(axis=1).sum()):,} items moved to free SIDs, "
                f"every SID unique; quantization error +{100 * added.sum() / error.sum():.1f}% in all, "
                f"+{100 * added[moved].mean() / error.mean() if moved.any() else 0:.0f}% of the mean per moved item")
    return reassigned


def _quantizer_path(settings: SIDSettings, key: str) -> Path:
    return settings.cache_dir / f"quantizer-{key[:24]}.npz"


def encode_new_items(new_texts: list[str], known_texts: list[str], known_codes: np.ndarray,
                     settings: SIDSettings, show_progress: bool = True, shipped: Path | None = None) -> np.ndarray:
    """SIDs for items added after the SIDs of ``known_texts`` were built (``known_codes``), without a refit:
    each new text through the quantizer fitted on ``known_texts``. Its state comes from the cache, or from the
    same deterministic fit again when the cache lost it. ``disambiguate`` numbers each new item after the
    items that already have its SID; ``reassign`` moves a new item whose SID is taken to the free SID that adds the
    least error (``reassign`` with the known items fixed). ``known_codes``: the codes of every item the model
    knows; ``known_texts``: the texts its quantizer was fitted on. The state of ``shipped`` SIDs wins over the
    cache's."""
    key = settings.codes_key(known_texts)
    path = _quantizer_path(settings, key)
    quantizer = make_quantizer(settings.sid_quantizer, settings.quantizer)
    arrays = _load_shipped(shipped, settings, known_texts)
    state = (load_arrays(path, key) if arrays is None else
             {name.removeprefix("state."): value for name, value in arrays.items() if name != "codes"})
    if state is None:
        logger.info(f"refitting the {settings.sid_quantizer} quantizer of {len(known_texts):,} items ({path} is missing)")
        embeddings = embed_texts(known_texts, settings.sent_emb_model, settings.sent_emb_batch_size,
                                 settings.sent_emb_device, settings.cache_dir, show_progress)
        quantizer.quantize(embeddings)
        save_arrays(path, quantizer.state, key)
    else:
        quantizer.state = state
    embeddings = embed_texts(new_texts, settings.sent_emb_model, settings.sent_emb_batch_size, settings.sent_emb_device,
                             settings.cache_dir, show_progress)
    codes = quantizer.encode(embeddings).astype(np.int64)
    if settings.sid_collision == "reassign":  # every SID stays unique: new items move, the known ones keep theirs
        costs = quantizer.digit_costs(embeddings)  # a fixed item never moves: its costs are never read
        costs = np.concatenate([np.zeros((len(known_codes), *costs.shape[1:]), dtype=costs.dtype), costs])
        fixed = np.arange(len(costs)) < len(known_codes)
        codes = reassign(np.concatenate([known_codes, codes]), costs, fixed=fixed)[0][len(known_codes):]
    if settings.sid_collision == "disambiguate":
        n_digit = settings.quantizer.n_digit
        taken: dict[tuple[int, ...], int] = {}
        for row in known_codes:
            prefix = tuple(row[:n_digit])
            taken[prefix] = max(taken.get(prefix, 0), int(row[n_digit]) + 1)
        index = np.empty((len(codes), 1), dtype=np.int64)
        for i, row in enumerate(codes):
            index[i] = taken.get(tuple(row), 0)
            taken[tuple(row)] = int(index[i, 0]) + 1
        codes = np.concatenate([codes, index], axis=1)
    return codes
