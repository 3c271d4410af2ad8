"""The per-worker training loop and its pure pieces: noise, timesteps, losses, optimizers."""
