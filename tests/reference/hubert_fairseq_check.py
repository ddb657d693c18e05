"""One-off check (not part of the pytest suite): the reference ``hubert_base.pt`` loads into fairseq's own
``HubertModel`` with ``strict=True``, and fairseq's ``extract_features(output_layer=L)`` — what RVC calls —
equals transformers' ``hidden_states[L]`` (and ``final_proj`` of it for v1).

fairseq is not a dependency: install it aside (``ASIDE`` = any scratch directory), e.g.::

    pip install --target $ASIDE/cy cython
    PYTHONPATH=$ASIDE/cy MAX_JOBS=2 pip install --no-build-isolation --no-deps --target $ASIDE/fsite fairseq-fixed==0.12.3.1
    pip install --no-deps --target $ASIDE/fdeps hydra-core "antlr4-python3-runtime==4.9.3" bitarray sacrebleu \
        portalocker tabulate colorama lxml regex
    PYTHONPATH=.:$ASIDE/fsite:$ASIDE/fdeps python -m tests.reference.hubert_fairseq_check CACHE_DIR

Measured 2026-11-25 (fairseq-fixed 0.12.3.1, torch 2.13.0): max|diff| 0.0 for layer 9, final_proj(layer 9) and
layer 12 at 801, 16001 and 116803 samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from . import hubert_models as H


def main(cache: str) -> None:
    from fairseq.data import Dictionary
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    cache = H.ensure_reference(Path(cache))
    labels = Dictionary()
    for i in range(H.N_LABELS - len(labels)):
        labels.add_symbol(str(i))
    model = HubertModel(
        HubertConfig(label_rate=50, final_dim=H.FINAL_PROJ_DIM), HubertPretrainingConfig(label_rate=50), [labels]
    ).eval()
    ckpt = torch.load(str(cache / H.FAIRSEQ_FILE), weights_only=False)  # our own test file
    model.load_state_dict(ckpt["model"], strict=True)
    ref, final_proj = H.load_reference_model(cache)
    for n in (801, 16001, 116803):
        audio = H.speech_like(n)
        expected = H.reference_outputs(ref, final_proj, audio)
        x = torch.from_numpy(audio)[None]
        padding_mask = torch.zeros(x.shape, dtype=torch.bool)  # what RVC passes
        with torch.no_grad():
            f9 = model.extract_features(source=x, padding_mask=padding_mask, output_layer=9)[0]
            p9 = model.final_proj(f9)
            f12 = model.extract_features(source=x, padding_mask=padding_mask, output_layer=12)[0]
        diffs = {
            "layer9": np.abs(f9[0].numpy() - expected["layer9"]).max(),
            "final_proj9": np.abs(p9[0].numpy() - expected["final_proj9"]).max(),
            "layer12": np.abs(f12[0].numpy() - expected["layer12"]).max(),
        }
        print(n, tuple(f9.shape), diffs)


if __name__ == "__main__":
    main(sys.argv[1])
