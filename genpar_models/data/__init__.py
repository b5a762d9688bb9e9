"""Data: sources, decoding, the split, shard sets and the preprocessing that builds them.

    sources/       what a source holds and how one partition of it decodes (built-ins,
                   folder, array, table); what the preprocessing task maps over on Dask
    images.py      decoding and normalising single images to uint8 (C, S, S)
    png.py         libspng fast path for plain 8-bit PNGs (pixel-identical to Pillow)
    split.py       train/val/test by a hash of each sample's id
    manifest.py    the manifest of a shard set and its content address
    shards.py      writing a partition's shards, and verified reading of a committed set
    preprocess.py  one partition in, shards out; the commit (or the list of bad samples)

Nothing here imports torch, dask or prefect: Dask workers import it cheaply.
"""
