"""Fleet files: a YAML file declaring a group of VMs (:mod:`corral.fleet.file`) and the plan that makes the host
match it (:mod:`corral.fleet.plan`)."""

FLEET_LABEL = "corral.fleet"
"""The reserved label recording which fleet a VM was created by (``corral.fleet=NAME``)."""
