"""Wishe, a Chinese consumer app: schema, data map, demo subjects and sample tickets."""
