"""Metrics over the records of one (dataset, model, explainer, finding), and their aggregation."""

from .data import FindingData, Undefined

__all__ = ["FindingData", "Undefined"]
