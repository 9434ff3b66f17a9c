"""ResBin design-space exploration: the thesis's sweep on Ray (`dse.sweep`), its statistics
(`dse.analysis`), the markdown report (`dse.report`) and the board-aware choice (`dse.pareto`).
CLI: `python -m dse {sweep,report,pareto,bench} --help`."""
