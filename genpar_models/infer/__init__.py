"""Inference: drawing samples from a trained model, and compressed variants of its sampler.

sampling.py   seeded chunks (the same samples whatever the number of workers), PNG grids
compress.py   bf16/fp16, torch.compile, dynamic int8 and pruned variants of the sampling net
"""
