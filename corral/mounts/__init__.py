"""Shared folders: host directories a VM's guest mounts over virtio-9p (docs/explanation/mounts.md).

- :mod:`corral.mounts.host`: the host side, pure of QEMU: which host directories may be shared, the slots
  (symlinks and ``layout.json`` in the VM's directory) a starting QEMU's command line is built from.
- :mod:`corral.mounts.guest`: mounting and unmounting in the guest, through the guest agent.
- :mod:`corral.mounts.service`: ``corral mount add|rm|ls``, the hooks that mount at each readiness and unmount
  before a suspend.
"""
