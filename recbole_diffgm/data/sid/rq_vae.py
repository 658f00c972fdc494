"""TIGER's residual-quantized VAE (Rajput et al., NeurIPS 2023, §3.1), trained in torch.

An MLP encoder maps an item embedding to a latent vector; ``n_digit`` codebooks quantize it residually
(digit ``l`` quantizes what digits ``0..l-1`` left); an MLP decoder reconstructs the embedding from the
sum of the chosen code vectors. Loss: reconstruction MSE + codebook loss + ``beta`` x commitment loss,
with straight-through gradients. Codebooks start from k-means of the first latents (TIGER), and a code
left unused for a whole epoch is moved onto a random latent residual of that epoch, the usual guard
against codebook collapse. TIGER trains 20k epochs with Adagrad; the defaults here are a CPU budget.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from recbole_diffgm.data.sid.quantizers import QuantizerSettings, kmeans

logger = logging.getLogger(__name__)


@dataclass
class RQVAESettings:
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 256, 128])
    latent_dim: int = 32
    epochs: int = 200
    batch_size: int = 1024
    learning_rate: float = 1e-3
    beta: float = 0.25


class RQVAE(nn.Module):
    def __init__(self, input_dim: int, settings: RQVAESettings, n_levels: int, codebook_size: int):
        super().__init__()
        sizes = [input_dim, *settings.hidden_sizes, settings.latent_dim]
        self.encoder = self._mlp(sizes)
        self.decoder = self._mlp(sizes[::-1])
        self.codebooks = nn.Parameter(torch.zeros(n_levels, codebook_size, settings.latent_dim))
        self.beta = settings.beta

    @staticmethod
    def _mlp(sizes: list[int]) -> nn.Sequential:
        layers = []
        for i, (size_in, size_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(size_in, size_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return nn.Sequential(*layers)

    def quantize(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(codes [n, L], quantized sum [n, d], codebook + commitment loss, residual per level)``."""
        residual, quantized, loss = latent, torch.zeros_like(latent), latent.new_zeros(())
        codes, residuals = [], []
        for codebook in self.codebooks:
            residuals.append(residual.detach())
            code = torch.cdist(residual, codebook).argmin(dim=1)
            chosen = codebook[code]
            loss = loss + F.mse_loss(chosen, residual.detach()) + self.beta * F.mse_loss(residual, chosen.detach())
            quantized = quantized + chosen
            residual = residual - chosen.detach()
            codes.append(code)
        return torch.stack(codes, dim=1), quantized, loss, residuals

    def forward(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """``(loss, codes, residuals)``."""
        latent = self.encoder(embeddings)
        codes, quantized, quantization_loss, residuals = self.quantize(latent)
        reconstruction = self.decoder(latent + (quantized - latent).detach())  # straight-through
        return F.mse_loss(reconstruction, embeddings) + quantization_loss, codes, residuals

    @torch.no_grad()
    def init_codebooks(self, embeddings: torch.Tensor, seed: int) -> None:
        residual = self.encoder(embeddings)
        for level, codebook in enumerate(self.codebooks):
            centroids, assignment = kmeans(residual.numpy(), codebook.shape[0], seed + level)
            codebook.copy_(torch.from_numpy(centroids))
            residual = residual - codebook[torch.from_numpy(assignment).long()]


class RQVAEQuantizer:
    def __init__(self, settings: QuantizerSettings):
        self.settings = settings
        self.vae_settings = RQVAESettings(**(settings.rq_vae or {}))

    def quantize(self, embeddings: np.ndarray) -> np.ndarray:
        settings, vae_settings = self.settings, self.vae_settings
        torch.manual_seed(settings.seed)
        generator = torch.Generator().manual_seed(settings.seed)
        data = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        model = RQVAE(data.shape[1], vae_settings, settings.n_digit, settings.codebook_size)
        model.init_codebooks(data, settings.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=vae_settings.learning_rate)

        progress = tqdm(range(vae_settings.epochs), desc="RQ-VAE", unit="epoch", leave=False)
        for epoch in progress:
            used = torch.zeros(settings.n_digit, settings.codebook_size, dtype=torch.bool)
            total = 0.0
            for batch in torch.randperm(len(data), generator=generator).split(vae_settings.batch_size):
                loss, codes, residuals = model(data[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
                used.scatter_(1, codes.T, True)
            self._revive_dead_codes(model, used, residuals, generator)
            usage = used.float().mean(dim=1)
            progress.set_postfix(loss=f"{total / len(data):.4f}", usage=f"{usage.min():.2f}")
            if epoch == 0 or (epoch + 1) % max(1, vae_settings.epochs // 5) == 0:
                logger.info(f"RQ-VAE epoch {epoch + 1}/{vae_settings.epochs}: loss {total / len(data):.4f}, "
                            f"codes used per digit {[f'{u:.0%}' for u in usage.tolist()]}")
        model.eval()
        self.state = {name: value.numpy() for name, value in model.state_dict().items()}
        with torch.no_grad():
            return model.quantize(model.encoder(data))[0].numpy()

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        model = RQVAE(embeddings.shape[1], self.vae_settings, self.settings.n_digit, self.settings.codebook_size)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in self.state.items()})
        model.eval()
        return model.quantize(model.encoder(torch.from_numpy(np.asarray(embeddings, dtype=np.float32))))[0].numpy()

    @staticmethod
    @torch.no_grad()
    def _revive_dead_codes(model: RQVAE, used: torch.Tensor, residuals: list[torch.Tensor],
                           generator: torch.Generator) -> None:
        for level, codebook in enumerate(model.codebooks):
            dead = (~used[level]).nonzero()[:, 0]
            if len(dead):
                pool = residuals[level]
                codebook[dead] = pool[torch.randint(len(pool), (len(dead),), generator=generator)]
