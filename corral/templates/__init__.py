"""Templates: a running VM captured (memory, devices, disk) to launch new VMs from in a fraction of a boot."""
