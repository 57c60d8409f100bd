"""Backups: a content-addressed, deduplicating, compressed repository of VM disks, and the service that fills it.

Modules::

    chunks.py     the chunk file format (zstd payload behind a header with its checksum), zero detection, the
                  pure arithmetic of chunk ranges
    repo.py       the repository on disk: format marker, lock, chunks, one JSON index per backup, garbage collection,
                  verification (docs/explanation/backup-format.md)
    retention.py  which backups --keep-last/--keep-daily/--keep-weekly keep (pure)
    schedule.py   backup schedules: the table, and when one is due (pure)
    service.py    BackupService: create (full or incremental, running or stopped VMs), list, verify, restore, prune,
                  and the schedules the daemon runs
    models.py     wire models shared by the API and the client

Errors (under :class:`corral.errors.CorralError`)::

    RepositoryError        the repository is missing, not a repository, or locked too long
    └── CorruptBackup      a chunk or index failed its checksum, or is missing: never restored from
"""
