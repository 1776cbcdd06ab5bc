"""Convert a released detectron2 VQ2D SiamRCNN checkpoint to this toolkit's format.

    python tools/convert_detectron2_checkpoint.py input=model_final.pth output=siam_rcnn_r50.pth

Writes ``{"model": state_dict, "meta": {...}}`` atomically. The converted weights are first
loaded with strict=True into the model of the ``model`` config group (default
r50_fpn_detectron2: stride_in_1x1, BGR); ``check=false`` skips that. Run the result with
``model=r50_fpn_detectron2 model.weights.format=siamrcnn model.weights.path=<output>``.
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
    from vq2d.modeling.build import build_model
    from vq2d.modeling.weights import convert_detectron2_checkpoint

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model_cfg["weights"] = {"format": "none", "path": None}
    model = build_model(model_cfg) if cfg.check else None
    meta = convert_detectron2_checkpoint(cfg.input, cfg.output, model, extra_meta={"model_config": model_cfg})
    print(f"wrote {cfg.output}: {meta['num_tensors']} tensors, dropped {len(meta['dropped'])} entries")


if __name__ == "__main__":
    main()
