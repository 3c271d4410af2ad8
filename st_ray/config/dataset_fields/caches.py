"""Dataset fields: cache locations and cache or discovery behaviour of one dataset."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import ONDEMAND, group
from st_ray.config.schema import Option, opt

CACHES: list[Option] = group(
    "Caches and discovery",
    [
        opt(
            "cache_dir_vae",
            str,
            None,
            "image only: folder (or S3 prefix on 'aws') for this dataset's VAE latents; must "
            "differ between datasets. Unset: <run-wide cache_dir_vae>/<id>, or "
            "<output_dir>/cache/vae/<model_family>/<id> (SimpleTuner's fallback).",
        ),
        opt(
            "cache_dir",
            str,
            None,
            "text_embeds: folder for the text-encoder outputs (unset: the run-wide "
            "cache_dir_text, as in SimpleTuner). On 'huggingface' datasets: the local download "
            "cache. Not the run-wide cache_dir (the model download cache).",
        ),
        opt(
            "cache_file_suffix",
            str,
            None,
            "Suffix of the bucket/metadata cache files kept next to the data. Unset: the "
            "dataset id. Lets two configs share a folder without clobbering each other.",
            no_effect="latents live in Parquet shards, not one cache file per image",
        ),
        opt(
            "vae_cache_clear_each_epoch",
            bool,
            None,
            "Delete this dataset's cached latents after each pass so random crops are "
            "re-drawn (SimpleTuner). st_ray caches one crop per image and reuses it every "
            "epoch; only false (or unset) is accepted.",
            unsupported_values={
                True: "st_ray encodes each image once (one crop) and every epoch reads that "
                "cache; re-encoding a dataset at each epoch boundary is not implemented",
            },
        ),
        opt(
            "hash_filenames",
            bool,
            True,
            "Cache entries are always named by a hash of the source path; accepted for "
            "compatibility (SimpleTuner ignores it too).",
            unsupported_values={False: "cache file names are always hashed, as in SimpleTuner"},
        ),
        opt(
            "text_encoder_batch_size",
            int,
            None,
            "text_embeds only: captions encoded per text-encoder call while filling this cache. "
            "Unset: this dataset's write_batch_size.",
            minimum=1,
        ),
        opt(
            "scan_for_errors",
            bool,
            False,
            "Read and hash every file again instead of trusting the stored listing (a file "
            "whose size and modification time, or S3 ETag, are unchanged is otherwise taken as "
            "unchanged), and check cached latents against their buckets (per "
            "vae_cache_scan_behaviour).",
        ),
        opt(
            "text_cache_ondemand",
            bool,
            False,
            "text_embeds only: encode missing caption embeds during training.",
            unsupported=ONDEMAND,
        ),
        opt(
            "text_cache_disable",
            bool,
            False,
            "text_embeds only: encode caption embeds during training and never write them.",
            unsupported=ONDEMAND,
        ),
        opt(
            "compress_cache",
            bool,
            None,
            "Compress this dataset's cache files (per-dataset form of compress_disk_cache; in "
            "SimpleTuner's code, not its dataloader guide).",
            unsupported="cache compression is not implemented yet",
        ),
        opt(
            "delete_nsfw_images",
            bool,
            False,
            "Delete samples rejected by the NSFW classifier.",
            unsupported="st_ray never deletes files from a dataset",
        ),
    ],
)
