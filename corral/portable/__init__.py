"""Portable VMs: export a VM to one archive, import it on any host with Corral."""
