"""OCI images as VMs: an OCI image (layout directory, ``docker save``/``podman save`` tarball, or registry) made
into a kernel-boot image whose init runs the image's entrypoint as the VM's main process.

Modules: :mod:`.layout` (references and the image's own JSON: index, manifest, config), :mod:`.tools` (skopeo and
umoci, which fetch, verify and unpack), :mod:`.guest` (Corral's private ``/.corral`` tree and init, and the initrd
that hands over to it), :mod:`.build` (the import, cached by the image's digest). See docs/explanation/oci.md.
"""
