"""Self-play negotiation episodes: prompts, turns, agreement judging, completions, rewards, rows, records."""
