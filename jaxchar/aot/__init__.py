"""Ahead-of-time checks for hardware this machine does not have: every program of a run
compiled for a TPU topology, its memory per chip against the chip's HBM, its FLOPs."""
