"""The `corral` CLI: a thin client of the API. Each verb parses, calls the client, prints."""
