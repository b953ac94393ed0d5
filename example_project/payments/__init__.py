"""The demo app: payments created through an idempotent JSON API."""
