"""Extract the 5 fps frames a VQ2D split needs into the JPEG frame cache.

    python tools/extract_frames.py split=val parts=[crop,response_track,negatives,search_window]

Resumable (frames already cached are skipped); see vq2d/data/extract.py.
"""
import hydra
from omegaconf import DictConfig

from vq2d.data.extract import extract_args_from_config, extract_frames


@hydra.main(config_path="../configs/vq2d", config_name="extract_frames", version_base=None)
def main(cfg: DictConfig) -> None:
    summary = extract_frames(**extract_args_from_config(cfg))
    print(summary.format())


if __name__ == "__main__":
    main()
