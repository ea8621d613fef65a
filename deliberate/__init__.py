"""deliberate: self-play negotiation + GRPO for Collective Agency alignment (arXiv 2603.10476), in JAX/Flax."""
