"""Write the synthetic mini-Ego4D data set (VQ2D clips + annotations, NLQ features,
annotations and narrations) in the exact Ego4D formats.

    python tools/make_synthetic.py out=data/synthetic seed=0 [preset=large]
"""
import hydra
from omegaconf import DictConfig, OmegaConf

from recipes.synthetic import format_summary, make_synthetic


@hydra.main(config_path="../configs", config_name="make_synthetic", version_base="1.3")
def main(cfg: DictConfig) -> None:
    summary = make_synthetic(cfg.out, seed=cfg.seed, preset=cfg.preset,
                             vq2d=OmegaConf.to_container(cfg.vq2d), nlq=OmegaConf.to_container(cfg.nlq))
    print(format_summary(summary))
    print(f"written to {cfg.out}/v2")


if __name__ == "__main__":
    main()
