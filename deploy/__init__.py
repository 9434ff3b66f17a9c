"""ResBin: deploy stage."""
