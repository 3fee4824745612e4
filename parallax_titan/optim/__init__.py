"""Optimizers (Muon + AdamW, with the parameter routing in routing.py) and WSD schedules with weight-decay
annealing, plugged into torchtitan through the TrainSpec (each group's lr and weight decay are logged by
parallax_titan/metrics.py)."""
