"""Train a LoRA or full fine-tune from a SimpleTuner config.

python jobs/train.py --config config/my-run/config.json [--dry-run] [--key value ...]
python jobs/train.py --demo        # the built-in example: tiny model, generated images
"""

import sys

import _bootstrap  # noqa: F401

from st_ray.jobs.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
