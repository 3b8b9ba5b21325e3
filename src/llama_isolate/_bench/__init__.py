"""Benchmarks of llama_isolate: ratios measured side by side in one run (`python -m bench`)."""
