"""Serving a defended model: the Open Inference Protocol app, dynamic batching, keys and quotas."""
