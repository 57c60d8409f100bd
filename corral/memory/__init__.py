"""Guest memory: the optional balloon and free page reporting (docs/explanation/memory.md)."""
