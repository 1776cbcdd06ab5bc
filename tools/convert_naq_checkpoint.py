"""Convert a released NaQ checkpoint (VSLNet .t7 / ReLER .pth) into this toolkit's format.

    python tools/convert_naq_checkpoint.py input=X.t7 output=Y.pth model=vslnet text_encoder.model_path=BERT_DIR
    python tools/convert_naq_checkpoint.py input=X.pth output=Y.pth model=reler preset=naq_reler \
        text_encoder.model_path=CLIP_DIR feature_dims=[2304,512]
    python tools/eval_nlq.py checkpoint=Y.pth data.root=EGO4D split=val

The converted checkpoint stores the training config of the preset (default naq_vslnet), so
evaluation rebuilds the model and the released data preparation from it. The last stdout
line is a JSON summary; exit 1 with a one-line message on bad input.
"""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from episodic.errors import DataError
from nlq.engine.naq_checkpoint import convert_naq_checkpoint


@hydra.main(version_base="1.3", config_path="../configs/nlq", config_name="convert_naq_checkpoint")
def main(cfg: DictConfig) -> None:
    try:
        summary = convert_naq_checkpoint(cfg)
    except (DataError, MissingMandatoryValue) as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
