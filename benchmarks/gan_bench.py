"""GAN recipes on mnist5k, scored by genpar's evaluator (same extractor, reference and protocol):

1. the plain single-file DCGAN a user would write (benchmarks/peer_dcgan.py, one process)
   against genpar's default GAN config (configs/mnist-gan-hinge.yaml), at equal samples seen;
2. the recipe before config version 4 (mnist-dcgan with model.gan_loss=bce, no EMA) against
   hinge + spectral norm + EMA, at the same steps and batch;
3. the best GAN recipe measured in 1. and 2. (the lower FID) against the best VAE recipe
   (configs/mnist-vae.yaml) at the same steps and batch.

Every arm trains `epochs` epochs of the train split at batch 64 in one process with 2 threads
(the peer's setting), so the arms differ only in the recipe. Targets: genpar's default beats
the peer (ratio peer FID / genpar FID >= 1); hinge+SN+EMA's FID <= 0.75x the old recipe's;
the best GAN's FID below the best VAE's (ratio <= 1).
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.common import QUICK_LIKELIHOOD, Result, stopwatch
from benchmarks.peer_dcgan import train_peer
from benchmarks.plain_train import load_train_images
from genpar_models.config import PipelineConfig, load_config
from genpar_models.eval.samples import generate_features
from genpar_models.eval.scorecard import evaluate_model, prepare, score_quality
from genpar_models.train.dist import DistContext
from genpar_models.train.loop import train
from genpar_models.train.runspec import RunSpec
from genpar_models.util import seeding

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
# mnist-dcgan before version 4 (the DCGAN the issue measured): BCE, no EMA, the DCGAN paper's
# Adam at one rate, and genpar 0.1's network: batch norm in both nets, no spectral norm (what
# config migration writes into a pre-v4 dcgan file). Without the last two the arm trains
# today's BCE + spectral norm + group norm DCGAN instead (FID 31.4 at 128 epochs, measured
# 2026-12-03): a different recipe under the old one's name.
OLD_RECIPE = ["model.gan_loss=bce", "model.ema_decay=null", "train.lr=0.0002"]
OLD_RECIPE += ["train.lr_discriminator=null", "train.adam_beta1=0.5", "train.adam_beta2=0.999"]
OLD_RECIPE += ["model.norm=batch", "model.spectral_norm=false"]


QUICK_EVAL = ["evaluate.num_samples=250", "evaluate.bootstrap=0", *QUICK_LIKELIHOOD]  # --quick


def arm_config(name: str, steps: int, extra: list[str], quick: bool) -> PipelineConfig:
    sets = [
        f"train.max_steps={steps}",
        f"train.batch_size_per_rank={BATCH}",
        f"train.checkpoint_every_steps={steps}",
        f"train.val_every_steps={steps}",
        "train.log_every_steps=100",
        "train.resume=false",
        *(QUICK_EVAL if quick else []),
        *extra,
    ]
    return load_config(REPO / "configs" / f"{name}.yaml", sets)


def train_arm(cfg: PipelineConfig, shards: Path, run_dir: Path) -> tuple[dict, float]:
    spec = RunSpec(
        config=cfg,
        shards_dir=str(shards),
        run_dir=str(run_dir),
        train_key=run_dir.name,
        threads_per_proc=2,
    )
    with stopwatch() as t:
        train(spec, DistContext(0, 0, 1, torch.device("cpu")))
    return evaluate_model(spec.model_dir, shards, cfg)["metrics"], t["s"]


def _progress(label: str, metrics: dict[str, float], seconds: float) -> None:
    """Each arm's figures as soon as it is scored: an arm takes minutes, and a run stopped
    before the section's table still shows what it measured."""
    shown = {k: round(v, 3) for k, v in metrics.items() if k.startswith(("eval/fid", "eval/cas"))}
    print(f"  [gan] {label}: {shown} after {seconds:.0f} s", flush=True)


def run(shards: Path, work: Path, quick: bool, epochs: int = 128) -> list[Result]:
    images = load_train_images(shards)
    steps = 8 if quick else epochs * (len(images) // BATCH)
    sec = f"gan recipes (mnist5k, {steps / (len(images) // BATCH):.3g} epochs = {steps} steps "
    sec += f"of batch {BATCH}, 1 process)"
    arms = {
        "hinge + SN + EMA (mnist-gan-hinge)": arm_config("mnist-gan-hinge", steps, [], quick),
        "before v4 (mnist-dcgan, bce, no EMA)": arm_config("mnist-dcgan", steps, OLD_RECIPE, quick),
        "best VAE recipe (mnist-vae)": arm_config("mnist-vae", steps, [], quick),
    }
    scores, seconds = {}, {}
    for i, (label, cfg) in enumerate(arms.items()):
        scores[label], seconds[label] = train_arm(cfg, shards, work / f"arm{i}")
        _progress(label, scores[label], seconds[label])
    cfg = next(iter(arms.values()))
    torch.set_num_threads(2)
    with stopwatch() as t:
        peer = train_peer(images, steps=steps, batch=BATCH)
    extractor, ref = prepare(shards, cfg.evaluate)
    seed = seeding.evaluation(cfg.evaluate.seed)
    gen = generate_features(
        peer,
        extractor,
        cfg.evaluate.num_samples,
        seed=seed,
        batch_size=cfg.evaluate.batch_size,
        device="cpu",
    )
    peer_fid = score_quality(ref, gen, cfg.evaluate, seed)["eval/fid"]
    _progress("peer single-file DCGAN", {"eval/fid": peer_fid}, t["s"])
    new, old, vae = arms
    out = [Result(sec, "peer single-file DCGAN eval/fid", peer_fid, "", note=f"{t['s']:.0f} s")]
    for label in arms:
        m = scores[label]
        note = f"{seconds[label]:.0f} s"
        if "eval/fid_raw" in m:
            note += f"; raw generator {m['eval/fid_raw']:.1f}"
        out.append(Result(sec, f"{label} eval/fid", m["eval/fid"], "", note=note))
    out.append(
        Result(
            sec,
            "genpar's default GAN vs the peer (peer FID / genpar FID)",
            scores[new]["eval/fid"],
            "",
            baseline="peer DCGAN",
            ratio=peer_fid / scores[new]["eval/fid"],
            target=1.0,
        )
    )
    out.append(
        Result(
            sec,
            "hinge + SN + EMA vs the recipe before v4 (FID ratio)",
            scores[new]["eval/fid"],
            "",
            baseline=old,
            ratio=scores[new]["eval/fid"] / scores[old]["eval/fid"],
            target=0.75,
            target_kind="max",
        )
    )
    best = min((new, old), key=lambda label: scores[label]["eval/fid"])
    out.append(
        Result(
            sec,
            "best GAN recipe vs best VAE recipe (FID ratio)",
            scores[best]["eval/fid"],
            "",
            baseline=vae,
            ratio=scores[best]["eval/fid"] / scores[vae]["eval/fid"],
            note=f"best GAN measured here: {best}",
            target=1.0,
            target_kind="max",
        )
    )
    return out


def run_conditional(shards: Path, work: Path, quick: bool, epochs: int = 128) -> list[Result]:
    """The conditional GAN (configs/mnist-cgan.yaml) at `epochs` epochs of batch 64, one
    process: its classification accuracy score against the real-trained reference classifier
    (the same classifier, steps and seed trained on as many real train images), and its
    intra-class FID beside its FID. Target: CAS >= 0.8x the reference."""
    images = load_train_images(shards)
    steps = 8 if quick else epochs * (len(images) // BATCH)
    sec = f"conditional GAN (mnist5k, {steps / (len(images) // BATCH):.3g} epochs = {steps} "
    sec += f"steps of batch {BATCH}, 1 process)"
    m, seconds = train_arm(arm_config("mnist-cgan", steps, [], quick), shards, work / "cgan")
    note = f"{seconds:.0f} s; eval/fid {m['eval/fid']:.1f}"
    return [
        Result(sec, "mnist-cgan eval/intra_fid_mean", m["eval/intra_fid_mean"], "", note=note),
        Result(
            sec,
            "mnist-cgan CAS vs the real-trained reference (eval/cas / eval/cas_real_reference)",
            m["eval/cas"],
            "",
            baseline=f"real-trained classifier ({m['eval/cas_real_reference']:.3f})",
            ratio=m["eval/cas_ratio"],
            target=0.8,
        ),
    ]
