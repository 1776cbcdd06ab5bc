"""The NaQ presets reproduce the released scripts' settings; VSLNet and its optimizer as released."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from nlq.engine.build import Schedule, resolve_train_config
from nlq.engine.optim import WarmupLinearSchedule, build_optimizer
from nlq.models.build import build_model, build_text_encoder

REPO = Path(__file__).resolve().parents[2]


def _config(*overrides):
    with initialize_config_dir(config_dir=str(REPO / "configs" / "nlq"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


# preset, stage -> (model, batch, lr, epochs, warmup, S)
SCRIPTS = {
    ("naq_vslnet", "joint"): ("vslnet", 2048, 1e-3, 200, 0.025, 2.5),      # VSLNet/scripts/train_naq.sh
    ("naq_vslnet", "finetune"): ("vslnet", 32, 1e-4, 200, 0.025, 2.5),     # finetune.sh, README FT_LR
    ("naq_vslnet", "nlq_only"): ("vslnet", 32, 1e-4, 200, 0.0, 2.5),       # train_scratch_nlq.sh: no warmup
    ("naq_reler", "joint"): ("reler", 768, 1.5e-4, 200, 0.0, 2.5),         # ReLER/scripts/train_naq.sh
    ("naq_reler", "finetune"): ("reler", 32, 1e-5, 200, 0.0, 2.5),         # README FT_LR 0.00001
    ("naqpp", "joint"): ("reler", 768, 1.5e-4, 200, 0.0, 5.0),             # NaQ++: S = 5.0
    ("naqpp", "finetune"): ("reler", 32, 1e-4, 200, 0.0, 5.0),             # NaQ++: FT_LR 0.0001
}


@pytest.mark.parametrize("preset, stage", list(SCRIPTS))
def test_presets_resolve_to_the_scripts(preset, stage):
    model, batch, lr, epochs, warmup, scale = SCRIPTS[preset, stage]
    extra = ["init=x.pth"] if stage == "finetune" else []
    cfg = resolve_train_config(_config(f"preset={preset}", f"stage={stage}", "text_encoder.model_path=/m", *extra))
    assert cfg.model.name == model and (cfg.batch_size, cfg.lr, cfg.max_epochs) == (batch, pytest.approx(lr), epochs)
    assert cfg.warmup_fraction == warmup and cfg.data.naq_expansion == scale and cfg.amp is False
    assert cfg.data.preparation == "released" and cfg.data.naq_expansion_rule == "steps" and cfg.data.naq_translate
    settings = Schedule.from_config(cfg)
    if model == "vslnet":
        assert cfg.text_encoder.name == "bert" and cfg.model.architecture == "released"
        assert (cfg.model.hidden_dim, cfg.model.max_len) == (128, 128)
        assert (settings.adam_eps, settings.no_decay, settings.weight_decay, settings.lr_decay) == (1e-6, "bias_norm", 0.01, "linear")
    else:
        assert cfg.text_encoder.name == "clip" and cfg.text_encoder.per_token_projection and cfg.text_encoder.exclude_eot
        assert (cfg.model.hidden_dim, cfg.model.max_len, cfg.model.dropout, cfg.model.num_cross_layers,
                cfg.model.contrastive_dim) == (256, 600, 0.1, 3, 64)
        assert (settings.no_decay, settings.weight_decay, settings.grad_clip, settings.lr_decay) == ("none", 1e-4, 0.1, "step")
        assert cfg.data.augment.crop_prob == 1.0 and list(cfg.data.augment.crop_ratio) == [0.4, 0.8]
        assert cfg.data.augment.splice_prob == 0.5
        assert list(cfg.data.features.names) == (["internvideo", "clip"] if preset == "naqpp" else ["slowfast", "clip"])


def test_older_presets_keep_their_schedule():
    cfg = resolve_train_config(_config("preset=tiny"))
    assert (cfg.warmup_fraction, cfg.adam_eps, cfg.no_decay, cfg.lr_decay, cfg.amp) == (0.025, 1e-8, "ndim", "linear", True)
    assert cfg.data.preparation == "exact" and cfg.data.naq_expansion_rule == "steps"


def test_cfg_job_shows_the_scripts_settings():
    out = subprocess.run([sys.executable, "tools/train_nlq.py", "preset=naq_vslnet", "--cfg", "job"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "batch_size: 2048" in out and "lr: 0.001" in out and "max_epochs: 200" in out and "name: bert" in out


# Optimizer and lr schedule as released --------------------------------------------------------
def test_weight_decay_exemptions():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Conv1d(4, 4, 1))
    model.register_parameter("scale", nn.Parameter(torch.ones(4)))  # 1-d, not a bias or norm
    groups = {rule: build_optimizer(model, 1e-3, 0.01, no_decay=rule).param_groups for rule in ("ndim", "bias_norm", "none")}
    exempt = {rule: sum(p.numel() for g in gs if g["weight_decay"] == 0.0 for p in g["params"]) for rule, gs in groups.items()}
    assert exempt == {"ndim": 4 + 8 + 4 + 4, "bias_norm": 4 + 8 + 4, "none": 0}
    assert build_optimizer(model, 1e-3, 0.01, eps=1e-6).defaults["eps"] == 1e-6
    with pytest.raises(ValueError, match="no_decay"):
        build_optimizer(model, 1e-3, 0.01, no_decay="names")


def test_step_lr_decay_and_no_warmup():
    step = WarmupLinearSchedule.from_fraction(1.0, 100, 0.0, decay="step", drop_every=40)
    assert [step.factor(s) for s in (0, 39, 40, 80, 99)] == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01])
    never = WarmupLinearSchedule.from_fraction(1.0, 100, 0.0, decay="step", drop_every=0)
    assert never.factor(99) == 1.0
    linear = WarmupLinearSchedule.from_fraction(1.0, 100, 0.0)
    assert linear.factor(0) == 1.0 and linear.factor(50) == 0.5  # no warmup: the peak lr from the first step
    with pytest.raises(ValueError, match="decay"):
        WarmupLinearSchedule(1.0, 10, decay="cosine")


# VSLNet as released ------------------------------------------------------------------------------
def _vslnet(architecture):
    encoder = build_text_encoder({"name": "learned", "word_dim": 6, "char_dim": 4, "char_channels": [2, 2],
                                  "char_kernels": [1, 2]}, ["where is the cup"])
    torch.manual_seed(0)
    return build_model({"name": "vslnet", "hidden_dim": 16, "num_heads": 2, "max_len": 16, "num_conv_layers": 2,
                        "architecture": architecture}, encoder, video_dim=5)


def test_released_vslnet_blocks_and_init():
    released, ours = _vslnet("released"), _vslnet("ours")
    names = set(released.state_dict())
    assert "fusion.encoder.attention.out.weight" in names and "fusion.encoder.attention.out_norm.weight" in names
    assert not any(".attention.attention.out." in n or "feed_forward" in n for n in names)  # no projection after the heads
    assert any(".attention.attention.out." in n for n in ours.state_dict())
    assert released.fusion.encoder.attention.norm.eps == 1e-6 and released.predictor.start_norm.eps == 1e-6
    for name, module in released.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)) and module.bias is not None:
            assert module.bias.abs().sum() == 0, name  # zero biases
    weight = released.fusion.cq_attention.out.weight  # xavier-uniform: |w| <= sqrt(6 / (fan_in + fan_out))
    assert weight.abs().max() <= (6 / (64 + 16)) ** 0.5 and weight.abs().max() > 0.5 * (6 / 80) ** 0.5
    assert released.fusion.text_projection[0].p == 0.0 and ours.fusion.text_projection[0].p == 0.2
    with pytest.raises(ValueError, match="architecture"):
        _vslnet("v2")


def test_released_context_query_dropout_only_on_scores():
    from nlq.models.layers import ContextQueryAttention

    torch.manual_seed(0)
    layer = ContextQueryAttention(8, dropout=0.5, dropout_scores_only=True).train()
    context, query = torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    masks = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    out = layer(context, query, *masks)
    # the first quarter of the output projection's input is the undropped context itself
    layer.out = nn.Identity()
    assert torch.equal(layer(context, query, *masks)[..., :8], context) and out.shape == (2, 5, 8)


def test_checkpoints_saved_before_the_architecture_key_load_as_ours(tmp_path):
    from nlq.engine.inference import load_checkpoint_model

    model = _vslnet("ours")
    config = {"model": {"name": "vslnet", "hidden_dim": 16, "num_heads": 2, "max_len": 16, "num_conv_layers": 2},
              "text_encoder": {"name": "learned", "word_dim": 6, "char_dim": 4, "char_channels": [2, 2],
                               "char_kernels": [1, 2]}}
    torch.save({"model": model.state_dict(), "config": config, "video_dim": 5}, tmp_path / "old.pth")
    loaded, cfg, _ = load_checkpoint_model(tmp_path / "old.pth")
    assert cfg.model.architecture == "ours" and loaded.architecture == "ours"
