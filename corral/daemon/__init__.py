"""corrald: the per-host daemon (one asyncio program serving the API and supervising VMs)."""
