"""Storage: the layer tree of VM disks (external qcow2 overlays), snapshots and clones.

``chain.py`` is the pure model (a chain of layers, bottom to top); ``layers.py`` the table of layers and their
files (reference counts through backing links); ``service.py`` the snapshot and clone operations on top of the VM
service; ``live.py`` the QMP side (freeze a running disk, stream a layer away, back up a running disk).
"""
"""Storage: disks and their files (extra disks, throttling, image checks, full disks)."""
