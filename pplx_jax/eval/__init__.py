"""Evaluation: retrieval metrics in NumPy (`retrieval`), and an offline mteb 2.x adapter (`mteb_adapter`)."""
