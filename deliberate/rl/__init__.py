"""GRPO: advantages, the masked clipped loss as (sum, count) pairs, LoRA, optimizers, pmapped and sharded steps."""
