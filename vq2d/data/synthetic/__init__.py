"""Synthetic mini-Ego4D for VQ2D: 5 fps H.264 clips of a camera moving over worlds made of
photographs bundled with scikit-image, with annotations in the exact Ego4D VQ2D format.

    from vq2d.data.synthetic import generate_vq2d
    generate_vq2d("data/synthetic", seed=0, preset="small")
"""
from vq2d.data.synthetic.generate import PRESETS, generate_vq2d

__all__ = ["PRESETS", "generate_vq2d"]
