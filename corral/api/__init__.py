"""The REST API: a thin layer that turns HTTP requests into calls on the domain services."""
