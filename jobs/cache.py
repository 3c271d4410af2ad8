"""Build or refresh the latent / text-embedding caches of a SimpleTuner config.

python jobs/cache.py --config config/my-run/config.json [--key value ...]
"""

import sys

import _bootstrap  # noqa: F401

from st_ray.jobs.cache import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
