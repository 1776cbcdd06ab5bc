"""`make reproduce`: the seed papers' findings on the synthetic val split
(recipes/reproduce.py): VQ2D with vs without negative frames; VSLNet, ReLER and SnAG on
NLQ only and NLQ + NaQ; VSLNet on NaQ only, and few-shot NLQ only vs NLQ + NaQ.

    python tools/reproduce.py [output_dir=outputs/reproduce] [nlq.seeds=[0]] [resume=false] ...

Writes OUT/results.json, OUT/findings.json, OUT/pictures/ and OUT/README.md; see
configs/reproduce.yaml.
"""
from omegaconf import DictConfig

from episodic.cli import tool_main
from episodic.config import save_config
from recipes.reproduce import run_reproduce
from recipes.steps import run_or_exit


@tool_main("../configs", "reproduce")
def main(cfg: DictConfig) -> None:
    save_config(cfg, cfg.output_dir)
    run_or_exit(run_reproduce, cfg)


if __name__ == "__main__":
    main()
