"""Trackers for VQ2D response tracks: the interface and registry (base), the default
detection-association tracker, OpenCV CSRT/KCF. Importing this package registers them."""
from vq2d.inference.tracking.base import (TRACKERS, Tracker, make_tracker, register_tracker, track_bidirectional,
                                          track_direction)
from vq2d.inference.tracking import association as _association  # noqa: F401  (registers "association")
from vq2d.inference.tracking import opencv as _opencv  # noqa: F401  (registers "csrt", "kcf")

__all__ = ["TRACKERS", "Tracker", "make_tracker", "register_tracker", "track_bidirectional", "track_direction"]
