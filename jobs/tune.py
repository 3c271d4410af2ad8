"""Run a hyperparameter campaign (Ray Tune) over a SimpleTuner config.

python jobs/tune.py --config config/my-run --sweep sweep.json [--dry-run] [--resume]
"""

import sys

import _bootstrap  # noqa: F401

from st_ray.jobs.tune import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
