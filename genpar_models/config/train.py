"""The `train` and `compute` sections: the torchrun job, and the processes and devices it uses."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from genpar_models.config.base import Section


class TrainConfig(Section):
    """The torchrun training job."""

    max_steps: int = Field(2000, ge=1, description="Optimizer steps in total (all epochs).")
    batch_size_per_rank: int = Field(64, ge=1, le=65536, description="Samples per step per rank.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate (VAE, GAN generator).")
    optimizer: Literal["adam", "sgd"] = Field(
        "adam",
        description="adam: Adam with adam_beta1/adam_beta2 and weight_decay; sgd: plain SGD "
        "(no momentum) with weight_decay, whose update is proportional to the gradient (how "
        "gradient parity across strategies is tested: Adam hides a wrong gradient scale).",
    )
    lr_discriminator: float | None = Field(
        None, gt=0, le=1.0, description="GAN discriminator learning rate (default: lr)."
    )
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    kl_weight: float = Field(1.0, ge=0, description="VAE: weight of the KL term (beta-VAE).")
    kl_anneal_steps: int = Field(
        0,
        ge=0,
        description="rvae: raise the KL weight linearly from 0 to train.kl_weight over this many "
        "steps (Bowman et al. 2016, against posterior collapse). 0: the full weight from the "
        "start.",
    )
    grad_clip_norm: float | None = Field(None, gt=0, description="Clip gradients to this norm.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant",
        description="Learning rate over the steps after the warm-up: constant, or cosine decay "
        "to 0 at train.max_steps (Loshchilov & Hutter 2017). Applies to every optimizer.",
    )
    warmup_steps: int = Field(
        0, ge=0, description="Linear learning-rate warm-up from 0 over this many steps."
    )
    grad_accum_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="Micro-batches of batch_size_per_rank accumulated into one optimizer step; "
        "the global batch is batch_size_per_rank x ranks x grad_accum_steps. Gradients are "
        "all-reduced on the last micro-batch only.",
    )
    n_critic: int = Field(
        1,
        ge=1,
        le=20,
        description="GAN: discriminator updates per generator update, each on its own real "
        "batch (WGAN-GP uses 5). A step is one generator update.",
    )
    gp_weight: float = Field(
        10.0, gt=0, description="GAN with model.gan_loss wgan_gp: weight of the gradient penalty."
    )
    r1_gamma: float = Field(
        0.0,
        ge=0,
        description="GAN: R1 penalty gamma/2 E[|grad D(x_real)|^2] on the discriminator "
        "(Mescheder et al. 2018); 0 = off. Typical: 0.1 to 10.",
    )
    checkpoint_every_steps: int = Field(
        200, ge=1, description="Rank 0 writes a checkpoint (and commits metrics) this often."
    )
    keep_checkpoints: int = Field(3, ge=1, le=100, description="Newest checkpoints kept on disk.")
    log_every_steps: int = Field(20, ge=1, description="Print and record train metrics this often.")
    val_every_steps: int = Field(
        200, ge=1, description="Evaluate on the validation split this often."
    )
    max_restarts: int = Field(
        1, ge=0, le=10, description="torchrun --max-restarts: elastic restarts after a rank dies."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast on CUDA, fp32 on CPU. fp16: float16 autocast with a "
        "gradient scaler, CUDA only.",
    )
    resume: bool = Field(
        True,
        description="Continue an interrupted run of the same config and data from its newest "
        "valid checkpoint instead of starting over.",
    )
    allow_reshard: bool = Field(
        False,
        description="Resume a sharded (compute.strategy fsdp) checkpoint under another world "
        "size: its tensors are resharded onto this run's ranks and the run is tagged "
        "genpar.resharded_from. The global batch and data order change with the ranks, so "
        "the run is no longer the exact continuation; off: such a resume is refused.",
    )
    init_from: str | None = Field(
        None,
        description="Initialise the weights (not the optimizer) from this model when no "
        "checkpoint exists: a run id, models:/NAME/VERSION, NAME@ALIAS or a model directory. "
        "The nightly retrain sets it to the champion's version when retrain.warm_start is on.",
    )

    @model_validator(mode="after")
    def _check_schedule(self) -> TrainConfig:
        if self.warmup_steps >= self.max_steps and self.warmup_steps > 0:
            raise ValueError(
                f"train.warmup_steps={self.warmup_steps} must be below train.max_steps="
                f"{self.max_steps}"
            )
        return self


class ComputeConfig(Section):
    """Processes, devices and clusters."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: every visible GPU if there is one, else CPU processes."
    )
    cpu_procs: int = Field(2, ge=1, le=256, description="Training processes on CPU (gloo).")
    threads_per_proc: int | None = Field(
        None, ge=1, description="Torch threads per CPU training process (default: cores / procs)."
    )
    dask_address: str | None = Field(
        default_factory=lambda: os.environ.get("GENPAR_DASK_ADDRESS") or None,
        description="Scheduler address of an existing Dask cluster (tcp://host:8786); default "
        "$GENPAR_DASK_ADDRESS, which `genpar up --team` sets for genpar's commands while its "
        "cluster runs, else none (a LocalCluster per flow run where a stage pays for one).",
    )
    dask_workers: int | None = Field(
        None, ge=1, description="Workers of the local Dask cluster (default: one per core)."
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every rank holds the whole model and optimizer state "
        "(DistributedDataParallel); fsdp: FSDP2 fully_shard on the model's blocks, so each "
        "rank holds 1/world_size of the parameters, gradients and optimizer state, with "
        "sharded checkpoints (torch.distributed.checkpoint). On CUDA, parameters in bf16 "
        "with fp32 gradient reduction when train.precision resolves to bf16.",
    )
    nnodes: int = Field(
        1,
        ge=1,
        le=1024,
        description="torchrun nodes; >1 needs rdzv_endpoint, and the other nodes join with "
        "`genpar join RUN_ID --rdzv-endpoint HOST:PORT` (the genpar home must be shared).",
    )
    rdzv_endpoint: str | None = Field(
        None,
        description="host:port of the c10d rendezvous: an address of the flow's node, whose "
        "agent hosts the store (the port must be free there and reachable from the others).",
    )
    rdzv_id: str | None = Field(
        None, description="Rendezvous job id shared by all nodes (default: the run's id)."
    )
    join_timeout_s: int = Field(
        600,
        ge=5,
        le=86400,
        description="Multi-node: seconds the rendezvous waits for all compute.nnodes to join "
        "before the run fails naming the rendezvous (torchrun's join_timeout).",
    )

    @model_validator(mode="after")
    def _check_nodes(self) -> ComputeConfig:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("compute.rdzv_endpoint is required when compute.nnodes > 1")
        if self.rdzv_endpoint is not None:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(
                    f"compute.rdzv_endpoint must be HOST:PORT (e.g. 10.0.0.5:29400), got "
                    f"{self.rdzv_endpoint!r}"
                )
        return self
