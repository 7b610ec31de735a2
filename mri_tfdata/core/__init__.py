"""Errors, atomic writes, fault-injection points and cache naming: what every layer builds on."""
