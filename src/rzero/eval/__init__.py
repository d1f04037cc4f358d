"""Evaluation: the world protocol, distribution metrics and reports."""
