"""Item embeddings -> semantic IDs: ``n_digit`` codes in ``[0, codebook_size)`` per item.

Every quantizer has one interface, ``quantize(embeddings) -> codes [n_items, n_digit]``, and is
deterministic under its seed. After ``quantize`` its fitted ``state`` (numpy arrays) lets ``encode`` give new
items codes from their embeddings, as the fitted quantizer would (cold start, no refit):

- ``opq`` (Parallel Semantic Encoding, DiffGRM): PCA to ``sent_emb_pca`` dims with whitening, L2
  normalisation, a learned OPQ rotation, then product quantization: each digit is the nearest of
  ``codebook_size`` centroids in its own sub-space, so the digits are parallel (no digit depends on another);
- ``rq_kmeans``: residual k-means, one level per digit, on the raw embeddings (coarse-to-fine digits);
- ``rq_vae``: TIGER's residual-quantized VAE, trained in torch (``rq_vae.py``);
- ``random``: uniform random codes, a control with no semantics.

k-means runs in faiss, on the GPU when faiss has one, on the CPU otherwise.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import faiss
import numpy as np
from sklearn.decomposition import PCA

from recbole_diffgm.errors import InputError

logger = logging.getLogger(__name__)


def faiss_has_gpu() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def nearest(data: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of each row's nearest centroid (squared Euclidean distance)."""
    distances = (centroids**2).sum(1)[None] - 2 * data @ centroids.T
    return distances.argmin(axis=1)


def kmeans(data: np.ndarray, k: int, seed: int, niter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """faiss k-means: ``(centroids [k, d], assignment [n])``."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if len(data) < k:
        raise InputError(f"codebook_size {k} is larger than the number of items to cluster ({len(data)})")
    clustering = faiss.Kmeans(data.shape[1], k, niter=niter, seed=seed, gpu=faiss_has_gpu(),
                              max_points_per_centroid=max(256, math.ceil(len(data) / k)))
    clustering.train(data)
    _, assignment = clustering.index.search(data, 1)
    return clustering.centroids, assignment[:, 0]


@dataclass
class QuantizerSettings:
    n_digit: int
    codebook_size: int
    seed: int
    sent_emb_pca: int = 0  # opq only
    opq_iterations: int = 50  # opq only
    kmeans_iterations: int = 20
    rq_vae: dict | None = None  # rq_vae only: see rq_vae.RQVAESettings

    def __post_init__(self):
        if self.n_digit < 1:
            raise InputError(f"n_digit must be at least 1, got {self.n_digit}")
        if self.codebook_size < 2:
            raise InputError(f"codebook_size must be at least 2, got {self.codebook_size}")


class OPQQuantizer:
    """PCA (whitened) -> L2 norm -> OPQ rotation -> product quantization: parallel digits."""

    def __init__(self, settings: QuantizerSettings):
        if settings.codebook_size & (settings.codebook_size - 1):
            raise InputError(f"codebook_size must be a power of two for PQ codes, got {settings.codebook_size}")
        if settings.sent_emb_pca % settings.n_digit:
            raise InputError(
                f"sent_emb_pca {settings.sent_emb_pca} must be a multiple of n_digit {settings.n_digit} "
                "(each digit quantizes an equal sub-space)"
            )
        self.settings = settings

    def reduce(self, embeddings: np.ndarray) -> np.ndarray:
        dims = self.settings.sent_emb_pca
        if dims > min(embeddings.shape):
            raise InputError(
                f"sent_emb_pca {dims} is larger than the embeddings allow ({embeddings.shape[1]} dims, "
                f"{embeddings.shape[0]} items)"
            )
        pca = PCA(n_components=dims, whiten=True, svd_solver="full")
        reduced = pca.fit_transform(embeddings)
        self.state = {"pca_mean": pca.mean_, "pca_components": pca.components_, "pca_variance": pca.explained_variance_}
        return (reduced / np.linalg.norm(reduced, axis=1, keepdims=True)).astype(np.float32)

    def _reduce_fitted(self, embeddings: np.ndarray) -> np.ndarray:
        """``reduce`` with the fitted PCA (sklearn's whitened ``transform``)."""
        state = self.state
        reduced = (embeddings - state["pca_mean"]) @ state["pca_components"].T / np.sqrt(state["pca_variance"])
        return (reduced / np.linalg.norm(reduced, axis=1, keepdims=True)).astype(np.float32)

    def quantize(self, embeddings: np.ndarray) -> np.ndarray:
        settings = self.settings
        data = self.reduce(embeddings)
        rotation = faiss.OPQMatrix(data.shape[1], settings.n_digit)
        rotation.niter = settings.opq_iterations
        # The PQ that OPQ alternates with; kept in a local so Python does not free it under faiss.
        rotation_pq = faiss.ProductQuantizer(data.shape[1], settings.n_digit, int(math.log2(settings.codebook_size)))
        rotation_pq.cp.seed = settings.seed
        rotation.pq = rotation_pq
        rotation.train(data)
        self.state["rotation"] = faiss.vector_to_array(rotation.A).reshape(data.shape[1], data.shape[1])
        rotated = rotation.apply(data)
        # Final codes: a full k-means per rotated sub-space (standard PQ training), GPU-capable.
        fitted = [kmeans(subspace, settings.codebook_size, settings.seed + digit, settings.kmeans_iterations)
                  for digit, subspace in enumerate(np.split(rotated, settings.n_digit, axis=1))]
        self.state["centroids"] = np.stack([centroids for centroids, _ in fitted])
        return np.stack([assignment for _, assignment in fitted], axis=1)

    def digit_costs(self, embeddings: np.ndarray) -> np.ndarray:
        """``[N, n_digit, codebook_size]``: each item's squared distance to every code of every digit (the
        quantization error of each choice; PQ digits are independent, so a SID's error is their sum)."""
        rotated = self._reduce_fitted(embeddings) @ self.state["rotation"].T
        return np.stack([((subspace[:, None, :] - centroids[None]) ** 2).sum(-1) for subspace, centroids in
                         zip(np.split(rotated, self.settings.n_digit, axis=1), self.state["centroids"])], axis=1)

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        rotated = self._reduce_fitted(embeddings) @ self.state["rotation"].T
        return np.stack([nearest(subspace, centroids) for subspace, centroids in
                         zip(np.split(rotated, self.settings.n_digit, axis=1), self.state["centroids"])], axis=1)


class RQKMeansQuantizer:
    """Residual k-means: digit ``l`` clusters what digits ``0..l-1`` left unexplained."""

    def __init__(self, settings: QuantizerSettings):
        self.settings = settings

    def quantize(self, embeddings: np.ndarray) -> np.ndarray:
        residual = np.ascontiguousarray(embeddings, dtype=np.float32)
        codes, levels = [], []
        for level in range(self.settings.n_digit):
            centroids, assignment = kmeans(residual, self.settings.codebook_size, self.settings.seed + level,
                                           self.settings.kmeans_iterations)
            residual = residual - centroids[assignment]
            codes.append(assignment)
            levels.append(centroids)
        self.state = {"centroids": np.stack(levels)}
        return np.stack(codes, axis=1)

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        residual, codes = np.asarray(embeddings, dtype=np.float32), []
        for centroids in self.state["centroids"]:
            codes.append(nearest(residual, centroids))
            residual = residual - centroids[codes[-1]]
        return np.stack(codes, axis=1)


class RandomQuantizer:
    """Uniform random codes: the control with no semantics."""

    def __init__(self, settings: QuantizerSettings):
        self.settings = settings

    def quantize(self, embeddings: np.ndarray) -> np.ndarray:
        self.state = {"seed": np.array(self.settings.seed)}
        generator = np.random.default_rng(self.settings.seed)
        return generator.integers(0, self.settings.codebook_size, size=(len(embeddings), self.settings.n_digit))

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        raise InputError("sid_quantizer random: a new item cannot get a SID from its text (random codes carry no "
                         "text); retrain with the new items")


def make_quantizer(name: str, settings: QuantizerSettings):
    """The quantizer called ``name``: ``opq``, ``rq_kmeans``, ``rq_vae`` or ``random``."""
    from recbole_diffgm.data.sid.rq_vae import RQVAEQuantizer

    quantizers = {"opq": OPQQuantizer, "rq_kmeans": RQKMeansQuantizer, "rq_vae": RQVAEQuantizer,
                  "random": RandomQuantizer}
    if name not in quantizers:
        raise InputError(f"unknown sid_quantizer '{name}'; choose one of {', '.join(quantizers)}")
    return quantizers[name](settings)
