"""Optimizers (Muon + AdamW with parameter routing), WSD schedules with weight-decay annealing,
and per-group lr/weight-decay logging, plugged into torchtitan through the TrainSpec."""
