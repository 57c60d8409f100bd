"""Who makes a request, what they may do, and console tickets (issue 13: docs/explanation/web.md)."""
