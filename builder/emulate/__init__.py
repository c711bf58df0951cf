"""Running foreign-arch code on this host: bootstrap and the emulated chroot."""
