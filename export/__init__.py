"""ResBin: export stage."""
