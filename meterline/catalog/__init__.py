"""Catalog: providers, devices, tiers and GPU models."""
