"""Example worlds for demos and tests."""
