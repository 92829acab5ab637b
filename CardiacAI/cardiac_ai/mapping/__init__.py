"""T1 and T2 mapping: pixelwise fitting of raw series, semi-synthetic data, myocardial contours and statistics."""
