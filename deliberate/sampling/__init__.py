"""Jitted, batched, bucketed sampling with a KV cache, sharded over the data axis of a mesh."""
