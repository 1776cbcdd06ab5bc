"""`make demo`: generate the synthetic mini-Ego4D and summarise it."""
import hydra
from omegaconf import DictConfig

from episodic.config import save_config
from episodic.io import atomic_write_json
from episodic.synthetic import format_summary, make_synthetic


@hydra.main(config_path="../configs", config_name="demo", version_base="1.3")
def main(cfg: DictConfig) -> None:
    save_config(cfg, cfg.output_dir)
    summary = make_synthetic(cfg.data.root, seed=cfg.seed, preset=cfg.preset)
    print(format_summary(summary))
    atomic_write_json(f"{cfg.output_dir}/data_summary.json", summary, indent=2)
    print(f"data: {cfg.data.root}/v2   outputs: {cfg.output_dir}")


if __name__ == "__main__":
    main()
