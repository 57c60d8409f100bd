"""Storage: disks and their files (extra disks, throttling, image checks, full disks)."""
