"""Corral: real QEMU virtual machines from one command, supervised by a per-host daemon."""

__version__ = "0.1.0"
