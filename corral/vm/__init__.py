"""The VM domain: the spec (what a VM is), its states (declared once) and the service that runs VMs."""
