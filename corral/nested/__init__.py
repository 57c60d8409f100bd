"""Corral inside a Corral VM: the bundle that installs Corral into a guest without internet (``bundle.py``)."""
