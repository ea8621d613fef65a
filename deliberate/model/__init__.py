"""The policy: a pure-functional Llama/Qwen2/Qwen3 decoder, checkpoint import/export, tokenizers."""
