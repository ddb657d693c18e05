"""Mutation fuzzing of every loader a user feeds files to (issue 16, "Fuzzing").

Targets (``targets.py``) and the public entry point each case runs:

* ``pth``: ``rvc_mlx.convert.convert_file`` (``load_checkpoint`` inside) and ``store.save`` of the result;
* ``safetensors``: ``service.voices.model_facts`` (``rvc-mlx info``), ``store.tensor_shapes``, ``store.load``
  (MLX) and ``store.load_numpy``;
* ``index``: ``retrieval.FeatureIndex.load`` and a ``blend`` on features of the index's dimension;
* ``f0``: ``f0.postprocess.read_f0_file`` and ``from_file``;
* ``audio``: ``audio.read``, ``audio.check`` and ``audio.header_seconds`` (libsndfile, then FFmpeg).

Seeds (``seeds.py``) are real files the harness builds itself: a tiny RVC voice (rvc's own model class, zip and
legacy ``torch.save``), a converted voice, faiss flat and IVF-flat indexes, F0 CSVs, wav/flac/ogg audio. The
mutation engine (``mutate.py``, a seeded numpy RNG: case ``i`` is a pure function of target, seed and ``i``)
applies 1-3 mutations per case: generic ones (bit flips, byte runs, truncation, deleted/duplicated ranges, a
2/4/8-byte field set huge) and structure-aware ones (pickle opcode edits and nested pickles, zip member and zip
header edits, safetensors header JSON/dtype/shape/offset and ``__metadata__`` config edits, faiss header and
list-count fields, CSV cells, RIFF fields). ``runner.py`` runs the cases in a worker process with an
address-space cap and a per-case time limit and classifies each (ok, clean error, crash, hang, traceback,
runaway allocation, leaked file).

Long runs: ``python -m tests.fuzz --target NAME|all --cases 100000 [--seed S]``. Bounded run in the default
suite: ``tests/test_fuzz.py``.
"""
