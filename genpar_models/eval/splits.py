"""Whether a shard set's held-out splits are large enough to score, checked without torch.

The training task runs this before any rank starts (a split too small to score would
otherwise fail only after training), in the flow's process, which imports torch only when
it evaluates (issue 18: the CLI's start-up). genpar_models/eval/reference.py re-exports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from genpar_models.errors import DataError

if TYPE_CHECKING:
    from genpar_models.config import EvaluateConfig
    from genpar_models.data.shards import ShardSet


def check_split_sizes(shardset: ShardSet, cfg: EvaluateConfig) -> None:
    """Fail before any scoring unless the reference split holds more than evaluate.nearest_k
    images (precision/recall's k-NN balls; FID's covariance needs two) and the floor split
    at least two.

    Raises:
        DataError: names the shard set, the split, its size and what would fix it.
    """
    floor_split = "test" if cfg.reference_split == "val" else "val"
    for split, need, why in (
        (cfg.reference_split, max(2, cfg.nearest_k + 1), f"evaluate.nearest_k={cfg.nearest_k}"),
        (floor_split, 2, "the real-vs-real FID floor"),
    ):
        have = shardset.count(split)
        if have < need:
            fix = f"a larger data.{split}_fraction, " if split != "train" else ""
            raise DataError(
                f"{shardset.directory}: the {split} split holds {have} image(s), but the "
                f"scorecard needs at least {need} ({why}): use more data, {fix}or a smaller "
                "evaluate.nearest_k"
            )
