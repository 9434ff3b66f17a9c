"""ResBin: train stage."""
