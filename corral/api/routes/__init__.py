"""One module per resource: vms, images, daemon."""
