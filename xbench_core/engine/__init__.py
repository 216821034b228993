"""Batched execution: configuration, devices, loaders, the run loop and distribution."""
