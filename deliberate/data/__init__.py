"""Shipped data (persona pairs, dilemmas, evaluation sets), its schema and quality gates, the LLM-driven generator,
the TFDS builders and the trainer's prompt iterators.

Import the submodules directly: `schema` is cheap; `builders` and `loader` import tensorflow_datasets.
"""
