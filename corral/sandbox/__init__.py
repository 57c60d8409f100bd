"""Sandbox runs: a sample in a throwaway VM, watched (docs/explanation/sandbox.md)."""
