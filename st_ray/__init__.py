"""st_ray: SimpleTuner-style diffusion fine-tuning on Ray."""

__version__ = "0.1.0"

from st_ray.quiet import quiet_third_party as _quiet_third_party

_quiet_third_party()  # before the libraries st_ray imports log their start-up notes
