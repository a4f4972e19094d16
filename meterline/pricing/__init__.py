"""Pricing: versioned price books, dynamic GPU pricing and quotes."""
