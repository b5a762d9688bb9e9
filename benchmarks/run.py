"""Run genpar's benchmark suite and write `results/latest.json` and `results/latest.md`.

    python -m benchmarks.run                 # the full suite (last measured: 14 min on 2 cores)
    python -m benchmarks.run --quick --out /tmp/bench   # smoke test (CI), ~3 min
    python -m benchmarks.run --readme        # also put the table into README.md

Every figure is a median over interleaved repeats, and every target is a ratio against a
baseline measured side by side in the same run (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import ABSOLUTE, QUICK_LIKELIHOOD, Result, machine

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results"
START, END = "<!-- benchmarks:start -->", "<!-- benchmarks:end -->"


def prepare(work: Path, quick: bool) -> tuple[Path, Path, object]:
    """mnist5k shards and a briefly trained mnist-vae model (weights need not be good)."""
    import torch

    from genpar_models.config import load_config
    from genpar_models.train.dist import DistContext
    from genpar_models.train.loop import train
    from genpar_models.train.runspec import RunSpec
    from tasks.preprocess import preprocess

    os.environ["GENPAR_HOME"] = str(work / "home")
    cfg = load_config(
        REPO / "configs" / "mnist-vae.yaml",
        [f"train.max_steps={20 if quick else 300}", "train.resume=false"],
    )
    shards = Path(preprocess.fn(cfg))
    spec = RunSpec(
        config=cfg, shards_dir=str(shards), run_dir=str(work / "model-run"), train_key="bench"
    )
    train(spec, DistContext(0, 0, 1, torch.device("cpu")))
    quick_eval = ["evaluate.num_samples=200", *QUICK_LIKELIHOOD]
    full = load_config(REPO / "configs" / "mnist-vae.yaml", quick_eval if quick else [])
    return shards, spec.model_dir, full


def markdown(results: list[Result], info: dict, quick: bool) -> str:
    lines = [
        f"Measured {info['date']} on {info['cpu']} ({info['cores']} cores, "
        f"{info['memory_gib']} GiB, torch {info['torch']}, "
        f"{'CUDA ' + info['cuda'] if info['cuda'] else 'no GPU'})"
        f"{' — quick mode, figures are indicative only' if quick else ''}.",
        "",
    ]
    section = None
    for r in results:
        if r.section != section:
            section = r.section
            lines += [
                "",
                f"**{section}**",
                "",
                "| benchmark | value | vs | ratio | target | |",
                "|---|---:|---|---:|---:|---|",
            ]
        target = (
            "" if r.target is None else ("≥ " if r.target_kind == "min" else "≤ ") + f"{r.target:g}"
        )
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        if r.ratio is not None and r.baseline == ABSOLUTE:
            ratio = f"{r.ratio:.3g}"  # the value against an absolute target, not a ratio
        note = f" ({r.note})" if r.note else ""
        value = f"{r.value:,.1f}" if abs(r.value) >= 10 else f"{r.value:.3g}"
        lines.append(
            f"| {r.name}{note} | {value} {r.unit} | {r.baseline or ''} | "
            f"{ratio} | {target} | {r.status} |"
        )
    return "\n".join(lines).strip() + "\n"


def update_readme(table: str) -> None:
    readme = REPO / "README.md"
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (CI)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results go")
    parser.add_argument("--readme", action="store_true", help="write the table into README.md")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        choices=[
            "preprocess",
            "train",
            "generate",
            "evaluate",
            "orchestration",
            "gpu",
            "serve",
            "gan",
            "cgan",
            "sweep",
            "fsdp",
            "halving",
            "sequences",
        ],
        help="run only these sections",
    )
    parser.add_argument(
        "--gan-epochs",
        type=int,
        default=128,
        help="epochs of each GAN recipe (the issue's target: 128, ~8 min per arm on 2 cores)",
    )
    parser.add_argument(
        "--halving-steps",
        type=int,
        default=None,
        help="train.max_steps of the halving section's digits-vae trials (default: the "
        "config's 3,000; 5 seeds x (9 full trials + a halving sweep), ~45 min on 2 cores)",
    )
    parser.add_argument(
        "--halving-seeds",
        type=int,
        nargs="+",
        default=None,
        help="search seeds of the halving section (default 0 1 2 3 4; --quick: 0)",
    )
    parser.add_argument(
        "--halving-rungs",
        type=float,
        nargs="+",
        default=None,
        help="the halving section's rungs, fractions of train.max_steps (default: "
        "benchmarks/halving_bench.py's RUNGS)",
    )
    parser.add_argument(
        "--sequence-steps",
        type=int,
        default=None,
        help="steps of each sines arm of the sequences section (default: sines-rvae's 3,000)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    everything = ["preprocess", "train", "generate", "evaluate", "orchestration", "gpu", "serve"]
    everything += ["gan", "cgan", "sweep", "fsdp", "halving", "sequences"]
    # The sweep, fsdp and halving sections cost minutes even in quick mode (real sweeps and
    # runs, two torchrun jobs per arm): the quick suite (CI's smoke test) runs them only when
    # asked for with --only; test_fsdp.py and test_sweep.py run them for real in CI.
    slow_quick = {"sweep", "fsdp", "halving", "cgan"}
    only = set(args.only or [e for e in everything if not (args.quick and e in slow_quick)])
    from benchmarks import (
        eval_bench,
        fsdp_bench,
        gan_bench,
        generate_bench,
        gpu_bench,
        halving_bench,
        orchestration_bench,
        preprocess_bench,
        sequence_bench,
        serve_bench,
        sweep_bench,
        train_bench,
    )

    t0 = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="genpar-bench-") as tmp:
        work = Path(tmp)
        # The trained mnist-vae model is for the sections that read it (not preprocess,
        # orchestration, sweep, fsdp or halving, which make their own).
        needs_model = only & {"train", "generate", "evaluate", "gpu", "serve", "gan", "cgan"}
        shards, model_dir, full_cfg = prepare(work, args.quick) if needs_model else (None,) * 3
        train_sps = None
        steps = [
            ("preprocess", lambda: preprocess_bench.run(work / "pre", args.quick)),
            ("train", lambda: train_bench.run(shards, work / "train", args.quick)),
            ("generate", lambda: generate_bench.run(model_dir, full_cfg, args.quick)),
            ("evaluate", lambda: eval_bench.run(model_dir, shards, full_cfg, train_sps or 1.0)),
            ("orchestration", lambda: orchestration_bench.run(work / "orch", args.quick)),
            (
                "gpu",
                lambda: gpu_bench.run(
                    train_bench.load_train_images(shards), full_cfg.model, args.quick
                ),
            ),
            ("serve", lambda: serve_bench.run(model_dir, args.quick)),
            ("gan", lambda: gan_bench.run(shards, work / "gan", args.quick, args.gan_epochs)),
            (
                "cgan",
                lambda: gan_bench.run_conditional(
                    shards, work / "cgan", args.quick, args.gan_epochs
                ),
            ),
            ("sweep", lambda: sweep_bench.run(work / "sweep", args.quick)),
            ("fsdp", lambda: fsdp_bench.run(work / "fsdp", args.quick)),
            (
                "halving",
                lambda: halving_bench.run(
                    work / "halving",
                    args.quick,
                    args.halving_steps,
                    args.halving_seeds,
                    args.halving_rungs,
                ),
            ),
            (
                "sequences",
                lambda: sequence_bench.run(work / "seq", args.quick, args.sequence_steps),
            ),
        ]
        for name, fn in steps:
            if name not in only:
                continue
            print(f"[bench] {name} …", flush=True)
            section = fn()
            results += section
            if name == "train":
                train_sps = next(r.value for r in section if "2 processes" in r.name)
            for r in section:
                print(
                    f"  {r.section} | {r.name}: {r.value:,.2f} {r.unit}"
                    + (f" ({r.ratio:.2f}x vs {r.baseline}) {r.status}" if r.ratio else ""),
                    flush=True,
                )
    info = {
        **machine(),
        "date": dt.date.today().isoformat(),
        "suite_minutes": round((time.perf_counter() - t0) / 60, 1),
        "quick": args.quick,
    }
    table = markdown(results, info, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(
        json.dumps({"machine": info, "results": [r.to_json() for r in results]}, indent=2)
    )
    (args.out / "latest.md").write_text(table)
    if args.readme:
        update_readme(table)
    print(table)
    print(f"[bench] done in {info['suite_minutes']} min -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
