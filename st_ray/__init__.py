"""st_ray: SimpleTuner-style diffusion fine-tuning on Ray."""

__version__ = "0.1.0"
