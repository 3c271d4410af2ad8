"""Dataset options: resolution and bucketing, captions, caches and the data loader's workers."""

from st_ray.config.schema import Json, opt

_NO_ONDEMAND_VAE = (
    "st_ray always pre-computes and stores VAE latents; on-demand encoding is not implemented"
)

# Options with ``dataset_field=True`` are also fields of a multidatabackend.json entry: an entry
# may set its own value and inherits this one when it leaves the field out (as SimpleTuner's
# data backend factory does). Their help therefore reads right in both places.
_RUN_WIDE_ONLY = "every dataset uses the run-wide value; per-dataset values are not implemented yet"

GROUP = "Data loading, captions and caching"

OPTIONS = [
    # Dataset definition
    opt(
        "data_backend_config",
        Json,
        None,
        "The dataset plan: a path to a multidatabackend-style JSON file or an inline JSON list "
        "of dataset entries. Several datasets on different storage can be mixed in one run.",
        required=True,
    ),
    opt(
        "override_dataset_config",
        bool,
        False,
        "Skip the check that a dataset's cached settings (crop, resolution, ...) still match "
        "the current config. Mismatches can break training in odd ways; prefer fixing them.",
    ),
    opt(
        "data_backend_sampling",
        str,
        "auto-weighting",
        "How batches are drawn from several datasets: 'auto-weighting' scales each dataset's "
        "chance by its size, 'uniform' uses only the manual probabilities.",
        choices=("uniform", "auto-weighting"),
    ),
    opt(
        "allow_dataset_oversubscription",
        bool,
        False,
        "When a dataset holds fewer samples than one effective batch across all workers, raise "
        "its repeats automatically (only where repeats is not set explicitly).",
    ),
    opt(
        "ignore_missing_files",
        bool,
        False,
        "Keep going when files listed in a dataset's cache are gone from storage instead of "
        "stopping with an error.",
        no_effect="missing or unreadable files are always skipped and counted in the cache summary",
    ),
    opt(
        "skip_file_discovery",
        str,
        None,
        "Discovery stages not to rescan when a run starts, once cached (comma- or "
        "space-separated: aspect, vae, text, metadata). Faster resumes of very large datasets, "
        "but missing or mis-bucketed files may go unnoticed.",
        choices=("aspect", "vae", "text", "metadata"),
        multiple=True,
        unsupported="st_ray lists every dataset on each run (one listing request per 1000 objects); reusing a stale listing is not implemented yet",
        dataset_field=True,
    ),
    opt(
        "preserve_data_backend_cache",
        bool,
        False,
        "Reuse the stored file listings of a dataset instead of rescanning it at startup. "
        "Meant for huge buckets that never change; stale listings are not detected.",
        unsupported="st_ray lists every dataset on each run (one listing request per 1000 objects); reusing a stale listing is not implemented yet",
        dataset_field=True,
    ),
    opt(
        "data_aesthetic_score",
        float,
        7.0,
        "Fixed aesthetic score fed to the refiner model's conditioning for every image.",
        minimum=0,
        unsupported="only used by refiner training, which st_ray does not implement",
    ),
    # Resolution and image sizes
    opt(
        "resolution",
        float,
        1024.0,
        "Training size, in resolution_type's unit: the edge of an equal-area square in pixels "
        "for 'pixel_area' (1024), the shorter edge in pixels for 'pixel', megapixels for "
        "'area' (1.0).",
        minimum=0,
        dataset_field=True,
    ),
    opt(
        "resolution_type",
        str,
        "pixel_area",
        "Unit of resolution and of the image size limits: 'pixel_area' turns a pixel edge into "
        "an equivalent area for bucketing, 'pixel' resizes the shorter edge to it, 'area' "
        "(deprecated) uses megapixels.",
        choices=("pixel", "area", "pixel_area"),
        dataset_field=True,
    ),
    opt(
        "minimum_image_size",
        float,
        None,
        "Skip images smaller than this, in resolution_type's unit (the shorter edge for "
        "'pixel', the area otherwise).",
        minimum=0,
        dataset_field=True,
    ),
    opt(
        "maximum_image_size",
        float,
        None,
        "Images larger than this are first shrunk to target_downsample_size (which it "
        "requires) before cropping, so crops keep more of the scene. In resolution_type's unit.",
        minimum=0,
        dataset_field=True,
    ),
    opt(
        "target_downsample_size",
        float,
        None,
        "Size that images above maximum_image_size are shrunk to before cropping, in "
        "resolution_type's unit.",
        minimum=0,
        dataset_field=True,
    ),
    opt(
        "max_upscale_threshold",
        float,
        None,
        "Largest upscale factor allowed for small images, as a fraction (0.2 = up to 20%). "
        "Buckets that would need more are dropped; unset allows any upscaling.",
        minimum=0,
        maximum=1,
        dataset_field=True,
    ),
    # Aspect buckets
    opt(
        "aspect_bucket_alignment",
        int,
        64,
        "Pixel multiple that bucket widths and heights are rounded to.",
        choices=(8, 16, 24, 32, 64),
    ),
    opt(
        "aspect_bucket_rounding",
        int,
        2,
        "Decimal places aspect ratios are rounded to when grouping images into buckets.",
        choices=(1, 2, 3, 4, 5, 6, 7, 8, 9),
    ),
    opt(
        "aspect_bucket_worker_count",
        int,
        12,
        "Workers used to sort images into aspect buckets. CPU-bound; slow storage can benefit "
        "from more workers than cores.",
        minimum=1,
        no_effect="Ray schedules the caching work itself (CPU tasks and actor pools sized from the cluster)",
    ),
    opt(
        "aspect_bucket_disable_rebuild",
        bool,
        False,
        "Do not rebuild the aspect bucket lists every epoch for datasets with randomised "
        "buckets; only the VAE cache is refreshed.",
        no_effect="buckets are fixed when the cache is built",
    ),
    opt(
        "disable_bucket_pruning",
        bool,
        False,
        "Keep buckets that hold fewer images than a batch needs. Useful for tiny datasets, but "
        "epoch counts and statistics may be off.",
    ),
    opt(
        "metadata_update_interval",
        int,
        3600,
        "Seconds between saves of the aspect bucket metadata while it is being built.",
        minimum=1,
        no_effect="st_ray commits cache metadata once per run, atomically",
        dataset_field=True,
    ),
    # Captions
    opt(
        "caption_strategy",
        str,
        "filename",
        "Where captions come from: 'filename' (the cleaned-up file name), 'textfile' (a .txt "
        "beside each image, one caption per line), 'instance_prompt' or 'instanceprompt' "
        "(instance_prompt for every image), 'parquet' (the parquet table; needs "
        "metadata_backend 'parquet'), 'csv' (csv_caption_column) or 'huggingface' (the Hub "
        "dataset's columns; what a 'huggingface' dataset that does not set it uses).",
        choices=(
            "filename",
            "textfile",
            "instance_prompt",
            "instanceprompt",
            "parquet",
            "csv",
            "huggingface",
            "webshart",
        ),
        unsupported_values={
            "webshart": "webshart (WebDataset tar shard) datasets are not implemented yet"
        },
        dataset_field=True,
    ),
    opt(
        "instance_prompt",
        str,
        None,
        "Fixed caption or trigger phrase: the caption with caption_strategy 'instanceprompt' "
        "or only_instance_prompt, a prefix with prepend_instance_prompt.",
        dataset_field=True,
    ),
    opt(
        "prepend_instance_prompt",
        bool,
        False,
        "Put instance_prompt in front of every caption.",
        dataset_field=True,
    ),
    opt(
        "only_instance_prompt",
        bool,
        False,
        "Ignore the per-image captions and train every image with instance_prompt alone.",
        dataset_field=True,
    ),
    opt(
        "parquet_caption_column",
        str,
        None,
        "Column of the parquet table that holds captions, for parquet datasets that do not "
        "name one themselves.",
    ),
    opt(
        "parquet_filename_column",
        str,
        None,
        "Column of the parquet table that holds image file names or ids, for parquet datasets "
        "that do not name one themselves.",
    ),
    opt(
        "caption_dropout_probability",
        float,
        0.1,
        "Chance that a sample is trained with an empty caption (and, for families conditioned on "
        "image size, without size conditioning), which keeps unconditional guidance working.",
        minimum=0,
        maximum=1,
    ),
    opt(
        "tokenizer_max_length",
        int,
        None,
        "Override the text encoder's token limit. Unset keeps the model's own length; changing "
        "it invalidates cached text embeddings.",
        minimum=1,
        caches=("text",),
    ),
    # Caches
    opt(
        "cache_dir",
        str,
        None,
        "Base directory for downloaded models and dataset caches. Unset: the usual Hugging Face "
        "cache location.",
    ),
    opt(
        "cache_dir_text",
        str,
        "cache",
        "Default directory for cached text embeddings, used by text-embed datasets that do not "
        "set their own.",
    ),
    opt(
        "cache_dir_vae",
        str,
        None,
        "Default directory for cached VAE latents, used by datasets that do not set their own.",
    ),
    opt(
        "compress_disk_cache",
        bool,
        True,
        "Gzip the cached latents and text embeddings. Saves a lot of space (T5 embeddings "
        "especially) at some CPU cost; existing caches must be deleted to change it.",
    ),
    opt(
        "vae_cache_scan_behaviour",
        str,
        "recreate",
        "What a cache integrity scan does with a latent that no longer matches its bucket: "
        "'recreate' deletes it so it is encoded again, 'sync' updates the bucket metadata.",
        choices=("recreate", "sync"),
    ),
    opt(
        "vae_cache_ondemand",
        bool,
        False,
        "Encode latents with the VAE during training instead of caching them beforehand.",
        unsupported=_NO_ONDEMAND_VAE,
        dataset_field=True,
    ),
    opt(
        "vae_cache_disable",
        bool,
        False,
        "Encode latents on demand and never write them to disk.",
        unsupported=_NO_ONDEMAND_VAE,
        dataset_field=True,
    ),
    opt(
        "vae_batch_size",
        int,
        4,
        "Images encoded per VAE call while building the latent cache.",
        minimum=1,
        dataset_field=True,
        dataset_unsupported=_RUN_WIDE_ONLY,
    ),
    opt(
        "keep_vae_loaded",
        bool,
        False,
        "Keep the VAE resident on the GPU after caching instead of unloading it. Less reloading, "
        "more VRAM in use during training.",
        no_effect="the VAE lives in Ray Data actors for the caching stage only",
    ),
    opt(
        "delete_model_after_load",
        bool,
        False,
        "Remove the base model's files from the Hugging Face cache once they are loaded.",
        unsupported="Ray workers may share the model cache; deleting it after load is not "
        "implemented",
    ),
    opt(
        "delete_unwanted_images",
        bool,
        False,
        "Delete images that fall below the minimum size from their storage instead of only "
        "skipping them.",
        dataset_field=True,
        dataset_unsupported=_RUN_WIDE_ONLY,
    ),
    opt(
        "delete_problematic_images",
        bool,
        False,
        "Delete images that fail to load from their storage.",
        dataset_field=True,
        dataset_unsupported=_RUN_WIDE_ONLY,
    ),
    # Workers, batching and I/O
    opt(
        "image_processing_batch_size",
        int,
        32,
        "Images queued at a time for parallel resizing and cropping.",
        minimum=1,
        dataset_field=True,
        dataset_unsupported=_RUN_WIDE_ONLY,
    ),
    opt(
        "read_batch_size",
        int,
        25,
        "Images read ahead while the VAE cache is being built.",
        minimum=1,
        no_effect="Ray schedules the caching work itself (CPU tasks and actor pools sized from the cluster)",
        dataset_field=True,
    ),
    opt(
        "write_batch_size",
        int,
        128,
        "Cache entries grouped into one write. Batching many small writes helps object stores "
        "such as S3 and some shared filesystems.",
        minimum=1,
        dataset_field=True,
    ),
    opt(
        "max_workers",
        int,
        32,
        "Threads or processes used during VAE caching.",
        minimum=1,
        no_effect="Ray schedules the caching work itself (CPU tasks and actor pools sized from the cluster)",
        dataset_field=True,
    ),
    opt(
        "enable_multiprocessing",
        bool,
        False,
        "Use processes instead of threads for metadata caching.",
        no_effect="Ray schedules the caching work itself (CPU tasks and actor pools sized from the cluster)",
    ),
    opt(
        "aws_max_pool_connections",
        int,
        128,
        "Most connections kept open at once to an S3-compatible bucket.",
        minimum=1,
        dataset_field=True,
    ),
    opt(
        "torch_num_threads",
        int,
        8,
        "Threads PyTorch may use for CPU work in each process (not data loader workers).",
        minimum=1,
        no_effect="Ray schedules the caching work itself (CPU tasks and actor pools sized from the cluster)",
    ),
    opt(
        "dataloader_prefetch",
        bool,
        False,
        "Fetch upcoming batches (latents, text embeddings, metadata) in the background so the "
        "GPU does not wait on storage. Mostly matters for fast GPUs at low resolution.",
        no_effect="st_ray's feed always reads ahead (dataloader_prefetch_qlen batches within "
        "feed_prefetch_mib)",
    ),
    opt(
        "dataloader_prefetch_qlen",
        int,
        10,
        "Batches each worker keeps ready when dataloader_prefetch is on. st_ray's feed always "
        "reads this many batches ahead, as far as feed_prefetch_mib allows.",
        minimum=1,
    ),
    opt(
        "feed_prefetch_mib",
        int,
        256,
        "st_ray: most MiB of cached latents and text embeddings each training worker holds "
        "read ahead (in flight or ready; at least one batch). The feed keeps no other row "
        "cache, so worker memory does not grow with the dataset. Raise it for high-latency "
        "storage with large rows (e.g. 512-token T5-XXL embeddings, 4 MiB per caption).",
        minimum=1,
    ),
    # Debugging output
    opt(
        "debug_aspect_buckets",
        bool,
        False,
        "Log detailed information about aspect bucket construction.",
        no_effect="the cache summary and the cache index report per-image outcomes instead",
    ),
    opt(
        "debug_dataset_loader",
        bool,
        False,
        "Log detailed information about dataset loading.",
        no_effect="the cache summary and the cache index report per-image outcomes instead",
    ),
    opt(
        "print_filenames",
        bool,
        False,
        "Log each file name as it is processed, to find the image that breaks a run.",
        no_effect="the cache summary and the cache index report per-image outcomes instead",
    ),
    opt(
        "print_sampler_statistics",
        bool,
        False,
        "Log statistics about the dataset sampler.",
        no_effect="the cache summary reports the dataset statistics",
    ),
]
