"""Installed only in the servers the fault tests start: it records the app's signals as rows."""
