"""Guest images: built from Debian's package archive (``archive``, ``tiny``, ``debian12``) and kept in a
read-only store (``store``). Builders produce :class:`~corral.images.artifacts.BuiltImage`; the store installs it."""
