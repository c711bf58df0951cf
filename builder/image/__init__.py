"""Image files: partitions, disk assembly, outputs, downloads, libguestfs."""
