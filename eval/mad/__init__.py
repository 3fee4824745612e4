"""MAD synthetic tasks (tasks.py), training one setting (train.py), the protocol and its table (run.py)."""
