"""Reaching into guests: SSH keys and shells (``ssh``), file copy (``files``), cloud-init seeds (``cloudinit``)."""
