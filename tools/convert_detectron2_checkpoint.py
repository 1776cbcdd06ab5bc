"""Convert a released detectron2 VQ2D SiamRCNN checkpoint to this toolkit's format.

    python tools/convert_detectron2_checkpoint.py input=model_final.pth output=siam_rcnn_r50.pth

Writes ``{"model": state_dict, "config": <the model group>, "meta": {...}}`` atomically. The
converted weights are first loaded with strict=True into the model of the ``model`` config
group (default r50_fpn_detectron2: stride_in_1x1, BGR); ``check=false`` skips that. The
stored config makes the result evaluate with no model flag::

    python tools/eval_vq2d.py checkpoint=siam_rcnn_r50.pth data.root=D split=val output_dir=O
"""
from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from episodic.cli import tool_main

ConfigStore.instance().store(
    name="convert_detectron2_checkpoint",
    node={
        "defaults": [{"model": "r50_fpn_detectron2"}, "_self_"],
        "input": "???",  # detectron2 checkpoint ({"model": {...}}), local path
        "output": "???",  # converted checkpoint path
        "check": True,  # strict-load the converted weights into the configured model first
    },
)


@tool_main("../configs/vq2d", "convert_detectron2_checkpoint")
def main(cfg: DictConfig) -> None:
    from episodic.errors import DataError
    from vq2d.modeling.build import build_model
    from vq2d.modeling.weights import convert_detectron2_checkpoint

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["weights"] = {"format": "none", "path": None}
    model = build_model(model_cfg) if cfg.check else None
    try:
        meta = convert_detectron2_checkpoint(cfg.input, cfg.output, model, model_config=model_cfg)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {cfg.output}: {meta['num_tensors']} tensors, dropped {len(meta['dropped'])} entries; "
          f"model config stored (depth {model_cfg.get('depth')}, input {model_cfg.get('input_format')})")


if __name__ == "__main__":
    main()
