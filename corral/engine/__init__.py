"""The only layer that talks to QEMU: its command line (``cmdline``), its process (``process``), its monitor
(``monitor``, through qemu.qmp), the guest agent (``guest_agent``), qemu-img (``qemu_img``) and the accelerator
probe (``accel``)."""
