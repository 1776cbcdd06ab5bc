"""Write the synthetic mini-Ego4D data set (VQ2D clips + annotations, NLQ features,
annotations and narrations) in the exact Ego4D formats.

    python tools/make_synthetic.py out=data/synthetic seed=0 [preset=large]
"""
from omegaconf import DictConfig, OmegaConf

from episodic.cli import tool_main
from recipes.synthetic import format_summary, make_synthetic


@tool_main("../configs", "make_synthetic")
def main(cfg: DictConfig) -> None:
    summary = make_synthetic(cfg.out, seed=cfg.seed, preset=cfg.preset,
                             vq2d=OmegaConf.to_container(cfg.vq2d), nlq=OmegaConf.to_container(cfg.nlq))
    print(format_summary(summary))
    print(f"written to {cfg.out}/v2")


if __name__ == "__main__":
    main()
