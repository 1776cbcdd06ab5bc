"""`make demo`: the whole pipeline on the synthetic mini-Ego4D (recipes/demo.py).

    python tools/demo.py [output_dir=outputs/demo] [vq2d.max_iter=300] [resume=false] ...

Writes OUT/results.json, OUT/vq2d_submission.json, OUT/nlq_submission.json, OUT/pictures/
and OUT/README.md; see configs/demo.yaml.
"""
from omegaconf import DictConfig

from episodic.cli import tool_main
from episodic.config import save_config
from recipes.demo import run_demo
from recipes.steps import run_or_exit


@tool_main("../configs", "demo")
def main(cfg: DictConfig) -> None:
    save_config(cfg, cfg.output_dir)
    run_or_exit(run_demo, cfg)


if __name__ == "__main__":
    main()
