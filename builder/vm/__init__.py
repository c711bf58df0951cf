"""Booting images under QEMU: machines, kernels, the boot harness."""
