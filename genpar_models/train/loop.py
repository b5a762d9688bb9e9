"""The training loop behind `python -m genpar_models.train`: data feed, steps, checkpoints, result.

Read it top to bottom: load the verified shards, build the model with the same seed on every
rank, restore the newest valid checkpoint, wrap in DDP, then loop over steps. Rank 0 writes
checkpoints every `train.checkpoint_every_steps` (after the step, which DDP's all-reduce has
already made identical on every rank), commits buffered metrics with them, and at the end
exports the model and writes `result.json`. Data order comes from a DistributedSampler
seeded by (seed, epoch), and noise from a generator seeded by (seed, rank, step), so a
resumed run continues exactly where the checkpoint left off.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from genpar_models.data.shards import open_shard_set
from genpar_models.errors import CheckpointError
from genpar_models.models import conditioning
from genpar_models.models.export import count_parameters, export_model, load_exported
from genpar_models.models.registry import check_model_config
from genpar_models.train import persist
from genpar_models.train.dist import DistContext, all_reduce_sum, barrier, elastic_restarts
from genpar_models.train.feed import BatchFeed
from genpar_models.train.runspec import RunSpec
from genpar_models.train.sink import make_sink
from genpar_models.train.tools import grad_scaler, process_layout
from genpar_models.train.trainer import ema_net, global_batch_size, make_steps, make_trainer
from genpar_models.train.validation import run_validation
from genpar_models.util import atomic, seeding

log = logging.getLogger("genpar.train")


class Meter:
    """Sums metrics on-device between log steps; all-reduced only when read."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0) + v.double()
        self.count += 1

    def read(self, ctx: DistContext) -> dict[str, float]:
        keys = sorted(self.sums)
        packed = torch.stack(
            [self.sums[k] for k in keys]
            + [torch.tensor(self.count, dtype=torch.float64, device=self.sums[keys[0]].device)]
        )
        packed = all_reduce_sum(packed, ctx)
        total = packed[-1].item()
        out = {k: (packed[i] / total).item() for i, k in enumerate(keys)}
        self.sums, self.count = {}, 0
        return out


def check_finite(metrics: dict[str, float], loss_key: str, step: int, ckpt: str | None) -> None:
    bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
    if bad:
        newest = ckpt or "none yet"
        raise FloatingPointError(
            f"training diverged at step {step}: {', '.join(f'{k}={v}' for k, v in bad.items())} "
            f"(watching {loss_key}); the newest good checkpoint is {newest}. Lower train.lr or "
            "set train.grad_clip_norm."
        )


@torch.no_grad()
def warm_start(model: torch.nn.Module, init_model_dir: str | None) -> str | None:
    """Load an exported model's weights into `model` (same architecture); None if no init."""
    if not init_model_dir:
        return None
    state, _ = load_exported(Path(init_model_dir))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"train.init_from: the model in {init_model_dir} does not fit this config's "
            f"model ({e}); warm start needs the same model section"
        ) from None
    return init_model_dir


def train(spec: RunSpec, ctx: DistContext) -> dict[str, Any] | None:
    """Run (or resume) training; rank 0 returns the result dict, other ranks None."""
    cfg = spec.config
    if spec.threads_per_proc:
        torch.set_num_threads(spec.threads_per_proc)
    shardset = open_shard_set(spec.shards_dir)
    train_images, train_labels = shardset.load("train")
    val_images, val_labels = shardset.load("val")
    family = check_model_config(cfg)
    classes = conditioning.classes_for_training(
        cfg.model, shardset.manifest.num_classes, train_labels, f"the shard set {spec.shards_dir}"
    )
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    kw = conditioning.build_kwargs(classes)
    model = family.build(cfg.model, shardset.image_shape, **kw).to(ctx.device)
    if family.fit_data is not None:
        family.fit_data(model, shardset)  # before a checkpoint may restore it
    is_sharded = cfg.compute.strategy == "fsdp"
    # Sharded weights take no whole state_dict: warm-start before (a checkpoint still wins).
    pre_warm = warm_start(model, spec.init_model_dir) if is_sharded else None
    average = ema_net(model, family, cfg)  # under FSDP: copied before sharding
    scaler = grad_scaler(ctx, cfg.train)  # fp16 only
    steps = make_steps(model, family, cfg, ctx, average, scaler)
    trainer = make_trainer(model, family, steps, cfg, average, scaler)
    expect = {"model_spec": model.model_spec(), "train_key": spec.train_key}
    layout = process_layout(ctx, cfg.train.precision, cfg.compute.strategy)
    resumed = None
    if cfg.train.resume:
        resumed = persist.restore(spec, trainer, expect, layout)
    expect = {**expect, "layout": layout}  # recorded with every checkpoint from here on
    start = resumed.step if resumed else 0
    warm = None
    if not resumed:
        warm = pre_warm if is_sharded else warm_start(model, spec.init_model_dir)
    if warm and trainer.ema is not None:
        trainer.ema.reset()  # average from the warm-start weights, not the random init
    if ctx.is_main:  # leftovers of a writer killed mid-write (never visible to readers)
        for directory in (spec.checkpoint_dir, spec.model_dir):
            atomic.remove_stale_temps(directory)
    steps.wrap()
    feed = BatchFeed(
        train_images, trainer.rows_per_step, ctx, cfg.seed, train_labels if classes else None
    )
    sink = make_sink(
        ctx.is_main, *(spec.tracking.uri, spec.tracking.run_id) if spec.tracking else (None, None)
    )
    restarts = elastic_restarts(ctx)
    if ctx.is_main:
        log.info(
            "training %s (%s params) on %d %s rank(s), %d train / %d val samples, steps %d→%d%s",
            cfg.model.name,
            f"{count_parameters(model):,}",
            ctx.world_size,
            ctx.device.type,
            len(train_images),
            len(val_images),
            start,
            spec.end_step,
            f", resumed from {resumed.path.name}" if resumed else "",
        )
        if warm:
            log.info("warm start: weights from %s", warm)
            sink.set_tags({"genpar.warm_started_from": warm})
        if resumed and resumed.resharded_from:  # train.allow_reshard: not an exact resume
            log.warning("resharded %s from %d rank(s)", resumed.path.name, resumed.resharded_from)
            sink.set_tags({"genpar.resharded_from": f"{resumed.resharded_from} ranks"})
        sink.set_tags(
            {
                "genpar.world_size": ctx.world_size,
                "genpar.device": ctx.device.type,
                "genpar.strategy": cfg.compute.strategy,
                "genpar.resumed_from_step": start,
                "genpar.elastic_restarts": restarts,
            }
        )
        if start == 0:  # once per run (a resumed run's was committed with its checkpoints)
            sink.log_metrics({"train/global_batch_size": global_batch_size(cfg, ctx.world_size)}, 0)
        for msg in resumed.skipped if resumed else []:
            log.warning("skipped corrupt checkpoint: %s", msg)
        if resumed and resumed.skipped:
            sink.set_tags({"genpar.skipped_checkpoints": " | ".join(resumed.skipped)[:4000]})
        if resumed:
            sink.replay(resumed.meta.get("pending_metrics", []))
            sink.commit()
    bits = family.reports_bits_per_dim(model.model_spec(), cfg.data.binarize)
    validation = (val_images, bits, val_labels if classes else None)
    state = _loop(trainer, family, feed, validation, spec, ctx, sink, start, expect, resumed)
    state["resharded_from"] = resumed.resharded_from if resumed else None
    # Under FSDP the exported model is gathered whole (a collective) into one file.
    state["weights"] = trainer.gather_export_states(model, ctx) if is_sharded else None
    barrier(ctx)
    if not ctx.is_main:
        return None
    return _finish(trainer, model, spec, sink, state, start, restarts, ctx)


def _loop(
    trainer, family, feed, validation, spec, ctx, sink, start, expect, resumed
) -> dict[str, Any]:
    """The steps from `start` to train.max_steps; `validation` is (val images, bits/dim?,
    val labels of a conditional model or None)."""
    cfg, end = spec.config.train, spec.end_step
    val_images, bits, val_labels = validation
    meter, noise = Meter(), torch.Generator()
    last_ckpt = str(resumed.path) if resumed else None
    last: dict[str, float] = dict(resumed.meta.get("metrics", {})) if resumed else {}
    loop_start = time.perf_counter()
    t0, n0 = loop_start, start
    for step in range(start + 1, end + 1):
        noise.manual_seed(seeding.training_noise(spec.config.seed, ctx.rank, step))
        x = family.to_input(feed(step - 1), spec.config.data.binarize, noise)
        meter.add(trainer.step(step, x, noise, feed.labels_of(step - 1)))
        at_ckpt = step % cfg.checkpoint_every_steps == 0 or step == end
        logged = step % cfg.log_every_steps == 0 or at_ckpt
        validated = step % cfg.val_every_steps == 0 or step == end
        if logged:
            last = meter.read(ctx) if meter.count else last
            check_finite(last, trainer.steps.loss_key, step, last_ckpt)
            rate = (step - n0) * trainer.rows_per_step * ctx.world_size / (time.perf_counter() - t0)
            last["train/samples_per_s"] = rate
            sink.log_metrics(last, step)
            if ctx.is_main:
                log.info("step %d/%d %s", step, cfg.max_steps, _fmt(last))
        if validated:
            scores = run_validation(trainer.steps, family, val_images, spec, ctx, bits, val_labels)
            sink.log_metrics(scores, step)
            last.update(scores)
        if at_ckpt:
            last_ckpt = persist.save(trainer, spec, ctx, step, {**expect, "metrics": last}, sink)
            barrier(ctx)
        if logged or validated or at_ckpt:
            # train/samples_per_s covers the training steps since the last log, validation or
            # checkpoint: the current speed, not an average diluted by start-up and pauses.
            t0, n0 = time.perf_counter(), step
    elapsed = time.perf_counter() - loop_start
    samples = max(end - start, 0) * trainer.rows_per_step * ctx.world_size
    return {
        "metrics": last,
        "checkpoint": last_ckpt,
        "wall_s": elapsed,
        "samples_per_s": samples / elapsed if elapsed > 0 and samples else 0.0,
    }


def _finish(trainer, model, spec, sink, state, start, restarts, ctx) -> dict[str, Any]:
    cfg = spec.config
    spec_dict = model.model_spec()
    if state["weights"] is not None:
        weights, variants = state["weights"]
    else:
        weights, variants = trainer.export_states(model)
    model_path = export_model(
        spec.model_dir,
        state=weights,
        variants=variants,
        spec=spec_dict,
        meta={
            "train_key": spec.train_key,
            "step": spec.end_step,
            "metrics": state["metrics"],
            "image_shape": list(spec_dict.get("image_shape") or spec_dict["sequence_shape"]),
        },
    )
    flushed = sink.commit(force=True)
    result = {
        "step": spec.end_step,
        "resumed_from_step": start,
        "elastic_restarts": restarts,
        "checkpoint": state["checkpoint"],
        "model_path": str(model_path),
        "metrics": state["metrics"],
        "samples_per_s": state["samples_per_s"],
        "wall_s": state["wall_s"],
        "num_parameters": count_parameters(model),
        "global_batch_size": global_batch_size(cfg, ctx.world_size),
        "strategy": cfg.compute.strategy,
        "resharded_from": state["resharded_from"],
        "metrics_flushed": flushed,
        # forked from torchrun's agent (GENPAR_FORK_RANKS) or a fresh interpreter
        "rank_start": os.environ.get("GENPAR_RANK_START", "interpreter"),
        # how rank 0 logged: RestSink (a server), FileSink (through the flow), MlflowSink
        "metrics_sink": type(sink).__name__,
        # Tracking unreachable at the end: the task retries these (never lost, never twice).
        "pending_metrics": [] if flushed else sink.pending(),
    }
    atomic.write_json(spec.result_path, result)
    return result


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in metrics.items())
