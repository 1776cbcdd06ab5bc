"""Code shared by the VQ2D and NLQ packages: atomic I/O, errors, checkpoints, launching."""
