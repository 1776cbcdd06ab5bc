"""Training-free VQ2D baselines, scored with the toolkit's own scorer (docs/vq2d.md#template-matcher-baseline)."""
