"""Idle control: measure each running VM's activity, suspend the idle ones to disk, wake them on demand.

- ``policy``: the idle policy (a VM spec field, or its project's default) and its thresholds, parsed and validated
- ``detector``: pure: activity counters sampled over time -> rates -> idle or not, and since when
- ``sampler``: reads the counters of one VM (QEMU's CPU time in /proc, QMP block stats, the guest agent's NIC
  statistics)
- ``holder``: while an idle-suspended VM sleeps, a listener on each of its forwarded TCP ports that wakes it
- ``service``: the daemon side: the sampling loop, the suspend decision, auto-resume

Design and defaults: docs/explanation/idle.md.
"""
