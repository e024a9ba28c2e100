"""The UniPixel model: configuration-driven modules, SAM 2 wrapper and the top-level model."""
