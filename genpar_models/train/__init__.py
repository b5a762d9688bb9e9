"""Training: the torchrun entry point and everything one rank does.

__main__.py    `python -m genpar_models.train --spec RUN_DIR/spec.json` (see its docstring)
agent.py       torchrun's agent as the training task launches it (torch.distributed.run's main)
runspec.py     the run spec the task writes and every rank reads
dist.py        process-group setup and teardown (nccl on CUDA, gloo on CPU)
tools.py       the StepTools a family's steps get: DDP wrapping, Adam, clipping, autocast
feed.py        batches of this rank's training images, addressable by step
loop.py        the loop: resume, steps, validation, checkpoints, export, result.json
checkpoint.py  training checkpoints: tensors + JSON sidecar, verified, pruned
sink.py        rank 0's batched MLflow metrics (the only MLflow calls in the library)
"""
