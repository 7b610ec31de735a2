"""Errors, atomic file writes and fault-injection points: what every other layer builds on."""
