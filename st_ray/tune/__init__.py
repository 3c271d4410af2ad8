"""Ray Tune campaigns: hyperparameter sweeps whose trials are Ray Train runs (jobs/tune.py)."""
