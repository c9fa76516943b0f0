"""unifs: one FUSE namespace over object stores for deep-learning I/O."""

__version__ = "0.1.0"
