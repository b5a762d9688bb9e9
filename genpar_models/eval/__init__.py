"""Evaluation: the scorecard, its feature space, metrics, uncertainty and protocols.

scorecard.py    one model's report: sample quality, plus likelihood where the family has one
samples.py      generated samples in seeded blocks, featurised (here or on Dask workers)
likelihood.py   ELBO terms, bits/dim, the IWAE bound and the train-test gap
features.py     the per-dataset feature extractor (classifier or autoencoder)
reference.py    the cache of extractors and real reference statistics
splits.py       whether the held-out splits are large enough to score (no torch)
metrics.py      FID, KID, precision/recall/density/coverage, inception score
uncertainty.py  bootstrap intervals of FID and KID
protocol.py     what a metric was measured under; runs rank only under one protocol
compression.py  the measured table of compression variants
promotion.py    the nightly's rule: does a challenger beat the champion?
plots.py        loss curves and other figures for MLflow
"""
