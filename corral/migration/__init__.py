"""Live migration of a running VM from this corrald to another one (docs/explanation/live-migration.md)."""
