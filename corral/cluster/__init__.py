"""Many hosts as one cluster, on etcd: who is a member (host records on leases), where each VM runs (placements),
where a new one goes (the pure scheduler, corral.cluster.placement), and how a request reaches the host that owns its
VM. A host with no cluster configured does none of this: it runs alone on SQLite, as before.

See docs/explanation/cluster.md for the keys in etcd and the protocols."""
