"""ResBin: dse stage."""
