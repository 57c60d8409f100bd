"""Prometheus metrics: ``GET /metrics`` (docs/reference/metrics.md).

- :mod:`corral.metrics.registry`: the daemon's own counters and histograms (API requests, operations, QMP errors,
  migrations), in a registry of Corral's own;
- :mod:`corral.metrics.sampler`: the daemon task that samples every VM and the host into a cache;
- :mod:`corral.metrics.collector`: renders that cache at each scrape, for the VMs the requester may see;
- :mod:`corral.metrics.http`: the middleware that counts API requests by route template;
- :mod:`corral.metrics.route`: the route.
"""
