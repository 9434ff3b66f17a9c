"""ResBin: deploy stage, the board package (numpy + pynq only, Python >= 3.10).

accelerator (the interface and input checks), sim (bit-exact numpy executor of golden.npz),
pynq_driver (the FPGA through FINN's IODMAs), packing (FINN's IODMA byte layout), golden
(golden.npz reader), bundle (the package folder), validate (CLI). package.py is host-only.
"""
