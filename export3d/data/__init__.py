"""Datasets: the built-in synthetic talking heads and the on-disk clip format for real data."""
