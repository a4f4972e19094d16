"""Meterline: billing, metering, escrow and settlement for compute marketplaces."""

__version__ = "0.1.0"
