"""Evaluation: held-out perplexity, lm-evaluation-harness adapter, MAD synthetic tasks."""
