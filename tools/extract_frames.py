"""Extract the 5 fps frames a VQ2D split needs into the JPEG frame cache.

    python tools/extract_frames.py split=val parts=[crop,response_track,negatives,search_window]

Resumable (frames already cached are skipped); see vq2d/data/extract.py. Prints the summary
(FAILED lines name the clips that could not be read), then the counts as ONE JSON line
(``num_failed``, ``failed``); exits 3 when a clip failed (``allow_failures=true``: 0).
"""
import json

from omegaconf import DictConfig

from episodic.cli import finish, tool_main
from vq2d.data.extract import extract_args_from_config, extract_frames


@tool_main("../configs/vq2d", "extract_frames", version_base=None)
def main(cfg: DictConfig) -> None:
    summary = extract_frames(**extract_args_from_config(cfg))
    print(summary.format())
    result = summary.to_dict()
    print(json.dumps(result), flush=True)
    finish(result, bool(cfg.allow_failures))


if __name__ == "__main__":
    main()
