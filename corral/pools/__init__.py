"""Warm pools: paused VMs from a template, kept ready to hand out (corral.pools.service)."""
