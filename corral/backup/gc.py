"""Garbage in a backup repository: the backups a retention policy no longer keeps (``corral backup prune``) and the
chunks no index names any more, removed under the repository's exclusive lock."""

from __future__ import annotations

from corral.backup import retention
from corral.backup.models import PruneResult
from corral.backup.repo import Repository
from corral.errors import NotFound


def drop_unindexed(r: Repository) -> int:
    """Remove the chunks no index names: what a backup that died before its index left. Safe only under the
    repository's exclusive lock, which every backup holds while it stores chunks, so no live backup's new chunks
    can be taken for garbage; a repository busy for a few seconds is left for `backup prune`."""
    with r.lock(exclusive=True, timeout=5):
        garbage = r.unreferenced()
        r.remove_chunks(sorted(garbage))
    return len(garbage)


def prune(r: Repository, vm: str, policy: retention.Policy, dry_run: bool) -> PruneResult:
    mine = [i for i in r.indexes() if i.vm == vm]
    if not mine:
        raise NotFound(f"no backups of VM '{vm}' in {r.path}")
    kept, removed = retention.select([(i.id, i.created.astimezone()) for i in mine], policy)
    removed_set = set(removed)
    used: set[str] = set()
    for bid in r.index_ids():
        if bid not in removed_set:
            used.update(c for c in r.load_index(bid).chunks if c is not None)
    garbage = {n: s for n, s in r.all_chunks().items() if n not in used}
    if not dry_run:
        for bid in removed:
            r.delete_index(bid)
        r.remove_chunks(sorted(garbage))
    return PruneResult(kept=kept, removed=removed, chunks_removed=len(garbage), bytes_freed=sum(garbage.values()),
                       dry_run=dry_run)
