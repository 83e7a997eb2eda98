"""Evaluation tasks beyond perplexity (next_sentence, mmlu, generate): items, scoring, executors."""
