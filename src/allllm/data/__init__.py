"""Data: raw text in, token shards on disk, rows out — and which of them a model has seen.

``raw/`` finds and reads raw sources, ``tokenize/`` turns them into shards;
``shard_format`` (names, meta, ``shard_id``), ``registry`` (each shard's state
for a config), ``seen`` (what a model trained), ``valsplit`` (held-out rows),
``dataset`` and ``sampler`` (rows as tensors, in a resumable order) make up the
shard store. Nothing here knows of models, optimizers or the training loop.
"""
