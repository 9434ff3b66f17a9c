"""Rules shared by every stage and by the board runtime: numpy and the standard library only.

`deploy/` ships this package to the board with itself, so nothing here may import torch, FINN,
qonnx or another stage.
"""
