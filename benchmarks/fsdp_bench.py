"""FSDP beside DDP on 2 CPU gloo ranks: what each rank holds, and training throughput.

    python -m benchmarks.fsdp_bench                       # mnist-vae, then mnist-vae-large
    python -m benchmarks.fsdp_bench --quick               # tiny sizes, a few steps
    python -m benchmarks.fsdp_bench --configs configs/mnist-vae-large.yaml --steps 6
    python -m benchmarks.run --only fsdp                  # as a section of the suite

Each arm is a real torchrun job of `python -m benchmarks.fsdp_bench --rank OUT CONFIG STRATEGY
STEPS`: every rank builds the config's model and its family's steps exactly as training does
(train/trainer.py `make_steps`: DDP, or FSDP2 with the optimizers over the shards), takes STEPS
optimizer steps on random batches of the config's shape, and reports the bytes of parameters,
gradients and optimizer state it holds, measured from the tensors (a DTensor counts its local
shard; train/sharding.py `rank_bytes`), and the seconds of its last STEPS-1 steps. The
arms alternate (DDP, FSDP, DDP, FSDP ...) and report medians; the memory ratio uses the
larger rank of each arm. Target: FSDP's bytes per rank <= 0.55x DDP's. On CPU throughput is
reported, not targeted (FSDP's all-gathers and reduce-scatters cost more than DDP's one
all-reduce when compute is cheap).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import Result, median

REPO = Path(__file__).resolve().parents[1]
SECTION = "fsdp"
CONFIGS = [REPO / "configs" / "mnist-vae.yaml", REPO / "configs" / "mnist-vae-large.yaml"]


def rank_main(out: str, config: str, strategy: str, n_steps: int) -> None:
    """One rank of an arm (under torchrun)."""
    import torch

    from genpar_models.config import load_config
    from genpar_models.models import get_family
    from genpar_models.train.dist import barrier, cleanup_distributed, setup_distributed
    from genpar_models.train.sharding import rank_bytes
    from genpar_models.train.trainer import make_steps

    ctx = setup_distributed("cpu")
    try:
        cfg = load_config(config, [f"compute.strategy={strategy}"])
        family = get_family(cfg.model.name)
        shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
        torch.manual_seed(cfg.seed)
        model = family.build(cfg.model, shape)
        steps = make_steps(model, family, cfg, ctx)
        steps.wrap()
        gen = torch.Generator().manual_seed(ctx.rank)
        rows = cfg.train.batch_size_per_rank
        t0 = time.perf_counter()
        for i in range(n_steps):
            if i == 1:
                t0 = time.perf_counter()  # the first step pays for lazy initialisation
            batch = torch.randint(0, 256, (rows, *shape), generator=gen, dtype=torch.uint8)
            steps.step(family.to_input(batch), gen)
        step_s = (time.perf_counter() - t0) / max(1, n_steps - 1)
        held = rank_bytes(steps.modules.values(), steps.optimizers.values())
        report = {"rank": ctx.rank, "bytes": held, "step_s": step_s, "rows": rows}
        Path(f"{out}.{ctx.rank}.json").write_text(json.dumps(report))
        barrier(ctx)  # no rank tears its process group down while the other still works
    finally:
        cleanup_distributed()


def run_arm(work: Path, config: Path, strategy: str, steps: int) -> list[dict]:
    out = work / f"{config.stem}-{strategy}-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "benchmarks.fsdp_bench", "--rank", str(out), str(config), strategy, str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per rank: 2 ranks on 2 cores
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{strategy} arm of {config.name} failed:\n{done.stderr[-3000:]}")
    return [json.loads(Path(f"{out}.{r}.json").read_text()) for r in range(2)]


def bench_config(work: Path, config: Path, steps: int, repeats: int) -> list[Result]:
    from genpar_models.config import load_config
    from genpar_models.models.export import build_model, count_parameters

    cfg = load_config(config)
    shape = (cfg.data.channels, cfg.data.image_size, cfg.data.image_size)
    n_params = count_parameters(build_model(cfg.model, shape))
    arms: dict[str, list[list[dict]]] = {"ddp": [], "fsdp": []}
    for _ in range(repeats):
        for strategy in arms:
            arms[strategy].append(run_arm(work, config, strategy, steps))
    per_rank = {s: max(r["bytes"]["total"] for r in runs[0]) for s, runs in arms.items()}
    parts = {
        s: max(runs[0], key=lambda r: r["bytes"]["total"])["bytes"] for s, runs in arms.items()
    }
    rate = {
        s: median([2 * rr[0]["rows"] / max(r["step_s"] for r in rr) for rr in runs])
        for s, runs in arms.items()
    }
    label = f"{config.stem} ({n_params / 1e6:.1f}M params, 2 gloo ranks x 1 thread)"
    mib = 2**20
    return [
        Result(
            SECTION,
            f"{label}: DDP bytes per rank",
            per_rank["ddp"] / mib,
            "MiB",
            note=_parts(parts["ddp"]),
        ),
        Result(
            SECTION,
            f"{label}: FSDP bytes per rank",
            per_rank["fsdp"] / mib,
            "MiB",
            baseline="DDP bytes per rank",
            ratio=per_rank["fsdp"] / per_rank["ddp"],
            target=0.55,
            target_kind="max",
            note=_parts(parts["fsdp"]),
        ),
        Result(
            SECTION,
            f"{label}: DDP throughput",
            rate["ddp"],
            "samples/s",
            samples=[2 * rr[0]["rows"] / max(r["step_s"] for r in rr) for rr in arms["ddp"]],
        ),
        Result(
            SECTION,
            f"{label}: FSDP throughput",
            rate["fsdp"],
            "samples/s",
            baseline="DDP throughput",
            ratio=rate["fsdp"] / rate["ddp"],
            note="reported, not targeted on CPU",
            samples=[2 * rr[0]["rows"] / max(r["step_s"] for r in rr) for rr in arms["fsdp"]],
        ),
    ]


def _parts(held: dict[str, int]) -> str:
    mib = 2**20
    return ", ".join(f"{k} {held[k] / mib:.2f} MiB" for k in ("params", "grads", "optimizer"))


def run(work: Path, quick: bool, configs: list[Path] | None = None, steps: int | None = None):
    work.mkdir(parents=True, exist_ok=True)
    chosen = configs or ([REPO / "configs" / "tiny.yaml"] if quick else CONFIGS)
    results: list[Result] = []
    for config in chosen:
        large = "large" in config.stem
        n = steps or (3 if quick else (6 if large else 20))
        results += bench_config(work, config, n, repeats=1 if quick or large else 3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.fsdp_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rank", nargs=4, metavar=("OUT", "CONFIG", "STRATEGY", "STEPS"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--configs", nargs="*", type=Path)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--work", type=Path, default=Path("/tmp/genpar-fsdp-bench"))
    args = parser.parse_args(argv)
    if args.rank:
        out, config, strategy, steps = args.rank
        rank_main(out, config, strategy, int(steps))
        # Without the interpreter's teardown, as the trainer's ranks leave: it can abort a
        # rank after its work is done (tests/fsdp_grads.py).
        from genpar_models.util.leave import exit_now

        exit_now(0)
    for r in run(args.work, args.quick, args.configs, args.steps):
        ratio = f"  {r.ratio:.3f}x {r.baseline} (target {r.target}) {r.status}" if r.ratio else ""
        print(f"{r.name}: {r.value:.2f} {r.unit}{ratio}  {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
