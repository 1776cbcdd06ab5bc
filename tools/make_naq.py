"""Create the NaQ training file: NLQ train + narrations as queries (docs/nlq.md#naq).

    python tools/make_naq.py narrations=ROOT/v2/narrations/egoclip.tsv \
        annotations_dir=ROOT/v2/annotations out=ROOT/v2/annotations/nlq_naq_train.json

Prints the counts (narrations read, inside / outside the clips, queries added, clips).
"""
from __future__ import annotations

from omegaconf import DictConfig

from episodic.cli import tool_main
from episodic.errors import DataError
from nlq.data.naq import make_naq


@tool_main("../configs/nlq", "make_naq")
def main(cfg: DictConfig) -> None:
    try:
        stats = make_naq(cfg.narrations, cfg.annotations_dir, cfg.out)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    print("\n".join(stats.lines()))
    print(f"written to {cfg.out}")


if __name__ == "__main__":
    main()
