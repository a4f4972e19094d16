"""Subscriptions and invoices: per-camera, per-device and per-tenant items billed monthly,
prorated by the second, invoiced and paid from the customer's wallet through the ledger."""
