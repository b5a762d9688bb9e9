"""The GAN a user would write instead of genpar: a plain single-file DCGAN, one process.

Written to the recipe of issue 14, nothing tuned: generator ConvTranspose(z=64 -> 128, 7x7)
BatchNorm ReLU, ConvTranspose(128 -> 64, 4, 2, 1) BatchNorm ReLU, ConvTranspose(64 -> 1, 4, 2,
1) Sigmoid; discriminator Conv(1 -> 64, 4, 2, 1) LeakyReLU(0.2), Conv(64 -> 128, 4, 2, 1)
BatchNorm LeakyReLU(0.2), Conv(128 -> 1, 7); batch 64, Adam 2e-4 with betas (0.5, 0.999), BCE
with logits, the generator in eval mode for sampling. Images in [0, 1], 28x28.

    python -m benchmarks.peer_dcgan SHARDS_DIR --epochs 128 --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.plain_train import load_train_images

Z = 64


def generator() -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(Z, 128, 7),  # (N, 64, 1, 1) -> (N, 128, 7, 7)
        nn.BatchNorm2d(128),
        nn.ReLU(),
        nn.ConvTranspose2d(128, 64, 4, 2, 1),  # -> (N, 64, 14, 14)
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1),  # -> (N, 1, 28, 28)
        nn.Sigmoid(),
    )


def discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1),  # (N, 1, 28, 28) -> (N, 64, 14, 14)
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1),  # -> (N, 128, 7, 7)
        nn.BatchNorm2d(128),
        nn.LeakyReLU(0.2),
        nn.Conv2d(128, 1, 7),  # -> (N, 1, 1, 1)
        nn.Flatten(0),
    )


class PeerModel(nn.Module):
    """The trained generator behind the `sample(n, generator=)` that genpar's evaluator calls."""

    def __init__(self, g: nn.Module) -> None:
        super().__init__()
        self.g = g

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        self.g.eval()
        return self.g(torch.randn(n, Z, 1, 1, generator=generator))


def train_peer(images: np.ndarray, *, steps: int, batch: int = 64, seed: int = 0) -> PeerModel:
    """Train the peer on uint8 (N, 1, 28, 28) images for `steps` steps of `batch` (epochs of
    a fresh permutation each, the last partial batch dropped)."""
    torch.manual_seed(seed)
    g, d = generator(), discriminator()
    opt_g = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    data = torch.from_numpy(images).float() / 255.0
    per_epoch, done = len(data) // batch, 0
    while done < steps:
        order = torch.randperm(len(data))
        for i in range(min(per_epoch, steps - done)):
            real = data[order[i * batch : (i + 1) * batch]]
            fake = g(torch.randn(batch, Z, 1, 1))
            lr, lf = d(real), d(fake.detach())
            loss_d = F.binary_cross_entropy_with_logits(
                lr, torch.ones_like(lr)
            ) + F.binary_cross_entropy_with_logits(lf, torch.zeros_like(lf))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            lg = d(fake)
            loss_g = F.binary_cross_entropy_with_logits(lg, torch.ones_like(lg))
            opt_g.zero_grad()
            loss_g.backward()
            opt_g.step()
        done += min(per_epoch, steps - done)
    return PeerModel(g)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards", type=Path)
    parser.add_argument("--epochs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    images = load_train_images(args.shards)
    train_peer(images, steps=args.epochs * (len(images) // 64))
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
