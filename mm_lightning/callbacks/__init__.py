"""Callbacks that own the recipe's knobs, and monitoring."""

from mm_lightning.callbacks.throughput import TokenThroughputMonitor

__all__ = ["TokenThroughputMonitor"]
