"""Metrics over the records of one (dataset, model, explainer, finding), and their aggregation.

What metric plugins need (`FindingData`, `Undefined`) is imported from `xbench_core`."""
