"""pibake: bake per-host Raspberry Pi SD card images for a small cluster."""

__version__ = "0.1.0"
