"""VQ2D: visual queries with 2D localization (siamese detector, peaks, tracking)."""
