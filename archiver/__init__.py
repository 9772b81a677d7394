"""exotel-archiver: archive Exotel Voice v3 call recordings into S3-compatible storage."""

__version__ = "0.1.0"
