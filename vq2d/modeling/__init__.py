"""SiamRCNN for VQ2D: ResNet-FPN backbone + RPN + siamese head (torchvision parts).

``build_model(cfg)`` builds it from the "model" config group (configs/vq2d/model/);
``vq2d.modeling.weights`` loads pretrained / detectron2 weights from local files.
"""
from vq2d.modeling.build import build_model
from vq2d.modeling.siamrcnn import FrameProposals, SiamRCNN

__all__ = ["build_model", "FrameProposals", "SiamRCNN"]
