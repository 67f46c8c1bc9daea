"""DNS request router for ISP-embedded CDN edge nodes."""

__version__ = "0.1.0"
