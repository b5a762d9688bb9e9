"""The baseline genpar's training must match: the plain single-file PyTorch loop a user would
write for the same model, batch and data (no DDP, no checkpoints, no tracking).

    python -m benchmarks.plain_train SHARDS_DIR --steps 300 --batch 64 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from genpar_models.config import ModelConfig
from genpar_models.models.export import build_model


def load_train_images(shards_dir: Path) -> np.ndarray:
    manifest = json.loads((shards_dir / "manifest.json").read_text())
    return np.concatenate(
        [np.load(shards_dir / s["images"]) for s in manifest["splits"]["train"]["shards"]]
    )


def plain_loop(
    images: np.ndarray,
    model_cfg: ModelConfig,
    *,
    steps: int,
    batch: int,
    lr: float = 1e-3,
    warmup: int = 20,
    seed: int = 0,
) -> float:
    """Train `steps` steps (after `warmup` untimed ones); return samples/s."""
    torch.manual_seed(seed)
    model = build_model(model_cfg, images.shape[1:])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    data = torch.from_numpy(images)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(data), generator=gen)
    pos = 0
    t0 = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        if pos + batch > len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        x = data[order[pos : pos + batch]].float() / 255.0
        pos += batch
        if model_cfg.name == "vae":
            out = model(x, generator=gen)
            loss = (out["recon"] + out["kl"]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            raise ValueError("the plain baseline covers the VAE (the benchmark's model)")
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("shards_dir", type=Path)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default='{"name": "vae", "latent_dim": 32, "base_channels": 32}')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = load_train_images(args.shards_dir)
    cfg = ModelConfig.model_validate_json(args.model)
    print(
        json.dumps({"samples_per_s": plain_loop(images, cfg, steps=args.steps, batch=args.batch)})
    )


if __name__ == "__main__":
    main()
