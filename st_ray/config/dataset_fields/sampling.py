"""Dataset fields: how often and when a dataset is sampled."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import SCHEDULE, group
from st_ray.config.schema import Option, opt

SAMPLING: list[Option] = group(
    "Sampling",
    [
        opt(
            "repeats",
            int,
            0,
            "Extra passes over this dataset per epoch: 0 means each sample once, 9 ten times "
            "(Kohya's 'repeats 10').",
            minimum=0,
        ),
        opt(
            "probability",
            float,
            1.0,
            "Relative chance that a batch is drawn from this dataset.",
            minimum=0,
        ),
        opt(
            "max_num_samples",
            int,
            None,
            "Use a fixed random subset of this many samples (seeded by the dataset id).",
            minimum=1,
            unsupported="dataset subsetting is not implemented yet",
        ),
        opt(
            "start_epoch",
            int,
            1,
            "First epoch in which the dataset is sampled.",
            minimum=0,
            unsupported=SCHEDULE,
        ),
        opt(
            "start_step",
            int,
            0,
            "First optimizer step at which the dataset is sampled.",
            minimum=0,
            unsupported=SCHEDULE,
        ),
        opt(
            "end_epoch",
            int,
            None,
            "Last epoch in which the dataset is sampled.",
            minimum=0,
            unsupported=SCHEDULE,
        ),
        opt(
            "end_step",
            int,
            None,
            "Last optimizer step at which the dataset is sampled.",
            minimum=0,
            unsupported=SCHEDULE,
        ),
        opt(
            "timestep_sampling_offset",
            float,
            0.0,
            "Shift flow-matching timestep sampling for this dataset: negative towards low "
            "noise (detail), positive towards high noise (composition).",
            unsupported="per-dataset timestep bias is not implemented yet",
        ),
        opt(
            "slider_strength",
            float,
            None,
            "Marks slider-LoRA data: positive, negative or neutral examples of a concept.",
            unsupported="slider LoRA training is not implemented yet",
        ),
    ],
)
