"""Licensing: plans, growth packs, licenses, cameras, devices, validation and offline files."""
