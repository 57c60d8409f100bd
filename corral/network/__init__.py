"""VM networking: NAT port forwards (``ports``), private networks and their switches (``private``, ``switch``)."""
