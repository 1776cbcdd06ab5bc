"""Train the VQ2D siamese detector (an example of using vq2d.engine.trainer).

    python tools/train_vq2d.py preset=tiny data.root=data/synthetic output_dir=OUT max_iter=300
    torchrun --nproc_per_node=8 tools/train_vq2d.py preset=improved model.weights.path=W output_dir=OUT
    python tools/train_vq2d.py preset=improved launcher=slurm launcher.partition=P output_dir=OUT

Running the same command again resumes from OUT/last_checkpoint. See configs/vq2d/train.yaml.
``max_iter=0`` is a dry run: build the model, load the initial weights, print the load
report, write OUT/config.yaml, exit (vq2d.engine.dry_run).
"""
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from episodic.cli import tool_main
from episodic.errors import DataError
from episodic.launch import job_result, submit
from vq2d.engine.build import model_config
from vq2d.engine.dry_run import dry_run
from vq2d.engine.trainer import train


@tool_main("../configs/vq2d", "train")
def main(cfg: DictConfig) -> None:
    if int(cfg.max_iter) == 0:  # dry run, here, whatever the launcher
        try:
            dry_run(cfg)
        except (DataError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
        return
    if cfg.get("launcher") is None:
        try:
            train(cfg)
        except DataError as e:
            raise SystemExit(f"error: {e}") from None
        return
    try:  # ${hydra:...} only resolves inside the app; a missing mandatory value (???) is an error
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        model_config(resolved)  # a bad model config fails here, not in the queued job
    except (MissingMandatoryValue, DataError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    launcher = resolved.pop("launcher")
    OmegaConf.set_struct(resolved, True)  # unknown keys stay errors in the job
    job = submit(train, resolved, **OmegaConf.to_container(launcher))
    print(f"submitted job {job.job_id}; logs: {job.paths.stdout}; outputs: {resolved.output_dir}")
    if launcher.executor != "slurm":
        print(job_result(job))


if __name__ == "__main__":
    main()
