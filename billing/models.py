"""Billing events and usage (see the metering issue)."""
