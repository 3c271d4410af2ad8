"""The fields of a multidatabackend.json dataset entry and its parquet/huggingface blocks."""

from __future__ import annotations

import dataclasses

from st_ray.config.schema import Json, Option, opt

# Reasons shared by several unsupported fields or values.
_VIDEO = "video datasets are not implemented yet"
_AUDIO = "audio datasets are not implemented yet"
_CONDITIONING = "conditioning datasets (ControlNet, masks, edit references) are not implemented yet"
_IMAGE_EMBEDS = (
    "separate image_embeds datasets are not implemented yet; latents go to each image "
    "dataset's cache_dir_vae"
)
_COND_EMBEDS = "conditioning image embeds (image-encoder features) are not implemented yet"
_SCHEDULE = "per-dataset start/end scheduling is not implemented yet"
_ONDEMAND = (
    "st_ray precomputes every latent and text embed before training; encoding during "
    "training is not implemented yet"
)
_DELETE = "st_ray never deletes files from a dataset"
_WEBSHART = "webshart (WebDataset tar shard) datasets are not implemented yet"
_MEMORY = "tmpfs/RAM-disk cache backends are not implemented yet; use type 'local'"
_GROUNDING = "grounding (bounding-box annotations) is not implemented yet"
_BATCHING = "st_ray sizes cache-building batches from the run-wide options"


def _group(title: str, fields: list[Option]) -> list[Option]:
    return [dataclasses.replace(f, group=title) for f in fields]


_IDENTITY = _group(
    "Identity and kind",
    [
        opt(
            "id",
            str,
            None,
            "Unique name of the dataset. Keep it stable: caches and bucket state are keyed by it.",
            required=True,
        ),
        opt(
            "type",
            str,
            "local",
            "Storage backend holding the data: 'local' (a folder), 'aws' (S3 or an "
            "S3-compatible store), 'csv' (a CSV list of image URLs) or 'huggingface' (a Hub "
            "dataset). A parquet/JSONL metadata table is not a type: set metadata_backend "
            "'parquet' and a 'parquet' block on any backend.",
            choices=("local", "aws", "csv", "huggingface", "memory", "webshart"),
            unsupported_values={"memory": _MEMORY, "webshart": _WEBSHART},
        ),
        opt(
            "dataset_type",
            str,
            "image",
            "What the entry holds: 'image' training samples, 'eval' images the evaluation loss "
            "is measured on (cached like images, never trained on), or 'text_embeds', the cache "
            "that stores text-encoder outputs (one entry with default true is needed).",
            choices=(
                "image",
                "text_embeds",
                "image_embeds",
                "conditioning_image_embeds",
                "conditioning",
                "video",
                "audio",
                "eval",
                "caption",
            ),
            unsupported_values={
                "image_embeds": _IMAGE_EMBEDS,
                "conditioning_image_embeds": _COND_EMBEDS,
                "conditioning": _CONDITIONING,
                "video": _VIDEO,
                "audio": _AUDIO,
                "caption": "caption-only (text-only) datasets are not implemented yet",
            },
        ),
        opt(
            "disabled",
            bool,
            False,
            "Skip this entry entirely, without deleting it from the file.",
            aliases=("disable",),
        ),
        opt(
            "default",
            bool,
            False,
            "text_embeds only: the text-embed cache that datasets without a 'text_embeds' field "
            "use, and where validation-prompt embeds are stored.",
        ),
        opt(
            "text_embeds",
            str,
            None,
            "image only: id of the text_embeds dataset caching this dataset's caption embeds. "
            "Unset: the text_embeds dataset marked default.",
            aliases=("text_embed_cache",),
        ),
        opt(
            "image_embeds",
            str,
            None,
            "image only: id of an image_embeds dataset that stores this dataset's VAE latents.",
            unsupported=_IMAGE_EMBEDS,
        ),
        opt(
            "is_regularisation_data",
            bool,
            False,
            "Regularisation (prior-preservation) data: the training target for these samples "
            "is the base model's own prediction (the denoiser with the LoRA/LyCORIS adapter "
            "switched off) rather than the image. Needs model_type 'lora'.",
            aliases=("is_regularization_data",),
        ),
        opt(
            "disable_validation",
            bool,
            False,
            "Never take validation inputs (reference images) from this dataset. Only models "
            "that validate from dataset images use it; for text-to-image training it has no "
            "effect.",
            no_effect="validation renders from prompts, not from dataset images",
        ),
    ],
)

_LOCAL = _group(
    "Local storage",
    [
        opt(
            "instance_data_dir",
            str,
            None,
            "Folder holding the images and their caption files, searched recursively. For "
            "'aws' SimpleTuner reads aws_data_prefix instead.",
        ),
    ],
)

_AWS = _group(
    "S3 storage (type 'aws')",
    [
        opt("aws_bucket_name", str, None, "Bucket holding the data (required for 'aws')."),
        opt(
            "aws_data_prefix",
            str,
            "",
            "Key prefix (folder) of the data inside the bucket; empty means the bucket root.",
        ),
        opt("aws_region_name", str, None, "Bucket region; unset lets the S3 client decide."),
        opt(
            "aws_endpoint_url",
            str,
            None,
            "Endpoint of an S3-compatible store (MinIO, R2, ...); unset means AWS.",
        ),
        opt(
            "aws_access_key_id",
            str,
            None,
            "Access key id; unset uses the usual AWS credential chain (environment, profile, "
            "instance role). Prefer {env:VAR} over writing keys into the file.",
            secret=True,
        ),
        opt(
            "aws_secret_access_key",
            str,
            None,
            "Secret access key paired with aws_access_key_id.",
            secret=True,
        ),
        opt(
            "aws_session_token",
            str,
            None,
            "Session token for temporary credentials (read by SimpleTuner's code, not in its "
            "dataloader guide).",
            secret=True,
        ),
        opt(
            "aws_max_pool_connections",
            int,
            None,
            "Most simultaneous connections to the bucket. Unset: the run-wide "
            "aws_max_pool_connections.",
            minimum=1,
        ),
    ],
)

_CSV = _group(
    "CSV URL list (type 'csv')",
    [
        opt(
            "csv_file",
            str,
            None,
            "CSV file listing image URLs and captions (required for 'csv').",
        ),
        opt(
            "csv_cache_dir",
            str,
            None,
            "Folder where downloaded images are kept (required for 'csv'). It only grows.",
            no_effect="st_ray reads csv image paths in place and never downloads URLs",
        ),
        opt(
            "csv_caption_column",
            str,
            None,
            "CSV column with the captions; use with caption_strategy 'csv'.",
        ),
        opt("csv_url_column", str, None, "CSV column with the image URLs."),
    ],
)

_HUB = _group(
    "Hugging Face Hub (type 'huggingface')",
    [
        opt(
            "dataset_name",
            str,
            None,
            "Hub dataset id, e.g. 'user/dataset' (required for 'huggingface'; may also sit in "
            "the huggingface block).",
        ),
        opt("split", str, "train", "Dataset split to load."),
        opt("revision", str, None, "Dataset revision (branch, tag or commit); unset: main."),
        opt("image_column", str, "image", "Column holding the images."),
        opt(
            "caption_column",
            str,
            None,
            "Caption column, as shown at the top level in SimpleTuner's Hub guide; SimpleTuner's "
            "code reads it from the huggingface block (default 'caption'), which takes "
            "precedence.",
        ),
        opt(
            "fallback_caption_column",
            str,
            None,
            "Column used when the caption column is empty (top-level form of "
            "huggingface.fallback_caption_column).",
        ),
        opt(
            "num_proc",
            int,
            None,
            "Processes used to filter the dataset on load (SimpleTuner default 16).",
            minimum=1,
            no_effect="Ray Data parallelises the work instead of datasets' worker processes",
        ),
        opt(
            "streaming",
            bool,
            False,
            "Stream the dataset instead of downloading it.",
            unsupported="SimpleTuner documents streaming as non-functional: buckets need the "
            "whole dataset's metadata",
        ),
        opt("video_column", str, "video", "Column holding videos.", unsupported=_VIDEO),
        opt("audio_column", str, "audio", "Column holding audio.", unsupported=_AUDIO),
        opt(
            "huggingface",
            Json,
            None,
            "Hub options block: caption/size columns, filters, cache folder... (see "
            "HUGGINGFACE_FIELDS).",
        ),
    ],
)

_METADATA = _group(
    "Metadata and captions",
    [
        opt(
            "metadata_backend",
            str,
            None,
            "Where image sizes come from: 'discovery' opens every file once and caches the "
            "result; 'parquet' reads them from the table in the 'parquet' block (fast for big "
            "or remote datasets); 'huggingface' from the Hub dataset. 'json' and 'filesystem' "
            "are old names for 'discovery'. Unset: 'discovery', or 'huggingface' for type "
            "'huggingface'.",
            choices=(None, "discovery", "json", "filesystem", "parquet", "huggingface", "webshart"),
            unsupported_values={"webshart": _WEBSHART},
        ),
        opt(
            "parquet",
            Json,
            None,
            "Parquet/JSONL metadata table for metadata_backend 'parquet' or caption_strategy "
            "'parquet' (see PARQUET_FIELDS).",
        ),
        opt(
            "caption_strategy",
            str,
            None,
            "Where captions come from: 'textfile' (a .txt next to each image, one caption per "
            "line), 'filename' (the cleaned-up file name), 'instanceprompt' (instance_prompt "
            "for every image), 'parquet' (the parquet table; needs metadata_backend "
            "'parquet'), 'csv' (csv_caption_column) or 'huggingface' (the Hub dataset's "
            "columns). Unset: the run-wide caption_strategy, or 'huggingface' for type "
            "'huggingface'.",
            choices=(
                None,
                "textfile",
                "filename",
                "instanceprompt",
                "parquet",
                "csv",
                "huggingface",
                "webshart",
            ),
            unsupported_values={"webshart": _WEBSHART},
        ),
        opt(
            "instance_prompt",
            str,
            None,
            "Fixed caption or trigger phrase: every caption with caption_strategy "
            "'instanceprompt', a prefix with prepend_instance_prompt. Unset: the run-wide "
            "instance_prompt.",
        ),
        opt(
            "prepend_instance_prompt",
            bool,
            False,
            "Put instance_prompt in front of every caption.",
        ),
        opt(
            "only_instance_prompt",
            bool,
            False,
            "Ignore the captions found and use instance_prompt alone for every image.",
        ),
        opt(
            "disable_multiline_split",
            bool,
            False,
            "Keep a multi-line caption file as one caption instead of one caption per line.",
        ),
        opt(
            "caption_filter_list",
            Json,
            None,
            "text_embeds only: strings, regular expressions or sed-style 's/find/replace/' "
            "rules applied to every caption, as a JSON list or a path to a .txt (one per line) "
            "or .json file.",
        ),
        opt(
            "caption_shuffle",
            Json,
            None,
            "Tag-order augmentation: {enable, count, seed, split_on: comma|space|period, "
            "position_start, include_original}; extra caption variants are made with the "
            "shuffled tags and embedded up front.",
            unsupported="caption tag shuffling is not implemented yet",
        ),
        opt(
            "captioning_model",
            str,
            None,
            "Transformers image-to-text model (Hub id or local folder, e.g. "
            "Salesforce/blip-image-captioning-base) that captions the images caption_strategy "
            "leaves without a caption; generated captions are saved (caption_output) and reused "
            "by later runs. Unset: images without a caption are skipped.",
        ),
        opt(
            "captioning_prompt",
            str,
            None,
            "Text the captioning model continues (e.g. 'a photograph of'); it is "
            "removed from the generated caption. Unset: unconditional captioning.",
        ),
        opt(
            "captioning_max_new_tokens",
            int,
            32,
            "Most tokens generated per caption (greedy decoding, so reruns agree).",
            minimum=1,
        ),
        opt(
            "captioning_batch_size",
            int,
            8,
            "Images per captioning model call.",
            minimum=1,
        ),
        opt(
            "caption_output",
            str,
            "sidecar",
            "Where generated captions are saved: 'sidecar' writes <image>.txt next to "
            "each local image (what caption_strategy 'textfile' reads), 'parquet' a table of "
            "image_id -> generated_caption (for remote or read-only datasets and metadata "
            "strategies). Existing captions are never overwritten.",
            choices=("sidecar", "parquet"),
        ),
    ],
)

_SIZES = _group(
    "Resolution, bucketing and cropping",
    [
        opt(
            "resolution",
            float,
            None,
            "Training size: megapixels for resolution_type 'area' (1.0), the edge of an "
            "equal-area square in pixels for 'pixel_area' (1024), the shorter edge in pixels "
            "for 'pixel'. Unset: the run-wide resolution.",
            minimum=0,
        ),
        opt(
            "resolution_type",
            str,
            None,
            "Unit of resolution and of the size limits: 'pixel_area', 'area' (megapixels) or "
            "'pixel' (shorter edge). Unset: the run-wide resolution_type.",
            choices=(None, "pixel_area", "area", "pixel"),
        ),
        opt(
            "minimum_image_size",
            float,
            None,
            "Images smaller than this are skipped, in resolution_type's unit (shorter edge for "
            "'pixel', area otherwise). Unset: the run-wide minimum_image_size.",
            minimum=0,
        ),
        opt(
            "maximum_image_size",
            float,
            None,
            "Images larger than this are first downscaled to target_downsample_size before "
            "cropping (requires target_downsample_size). Unset: the run-wide value.",
            minimum=0,
        ),
        opt(
            "target_downsample_size",
            float,
            None,
            "Size oversized images are downscaled to before cropping, in resolution_type's "
            "unit. Unset: the run-wide value.",
            minimum=0,
        ),
        opt(
            "minimum_aspect_ratio",
            float,
            None,
            "Skip images whose width/height is below this.",
            minimum=0,
        ),
        opt(
            "maximum_aspect_ratio",
            float,
            None,
            "Skip images whose width/height is above this.",
            minimum=0,
        ),
        opt(
            "max_upscale_threshold",
            float,
            None,
            "With crop_aspect 'closest' or 'random', drop buckets that would upscale an image "
            "by more than this fraction (0.2 = 20%). Unset: any upscaling is allowed.",
            minimum=0,
            maximum=1,
        ),
        opt(
            "crop",
            bool,
            False,
            "Crop images to their bucket's exact size instead of only resizing them.",
        ),
        opt(
            "crop_style",
            str,
            "random",
            "Which part of the image a crop keeps: 'random', 'center' ('centre'), 'corner' or "
            "'face'.",
            choices=("random", "center", "centre", "corner", "face"),
            unsupported_values={"face": "face detection is not implemented yet"},
        ),
        opt(
            "crop_aspect",
            str,
            "square",
            "Shape of the crop: 'square', 'preserve' (the image's own aspect ratio), "
            "'closest' or 'random' (one of crop_aspect_buckets).",
            choices=("square", "preserve", "closest", "random"),
        ),
        opt(
            "crop_aspect_buckets",
            Json,
            None,
            "Aspect ratios crop_aspect 'closest'/'random' may pick (required with those): a "
            "list of numbers, or of {aspect_bucket, weight} objects whose weights sum to 1.",
        ),
    ],
)

_SAMPLING = _group(
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
            "train_batch_size",
            int,
            None,
            "Batch size for this dataset, overriding the run-wide train_batch_size.",
            minimum=1,
            unsupported="every dataset uses the run-wide train_batch_size",
        ),
        opt(
            "start_epoch",
            int,
            1,
            "First epoch in which the dataset is sampled.",
            minimum=0,
            unsupported=_SCHEDULE,
        ),
        opt(
            "start_step",
            int,
            0,
            "First optimizer step at which the dataset is sampled.",
            minimum=0,
            unsupported=_SCHEDULE,
        ),
        opt(
            "end_epoch",
            int,
            None,
            "Last epoch in which the dataset is sampled.",
            minimum=0,
            unsupported=_SCHEDULE,
        ),
        opt(
            "end_step",
            int,
            None,
            "Last optimizer step at which the dataset is sampled.",
            minimum=0,
            unsupported=_SCHEDULE,
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

_CACHES = _group(
    "Caches and discovery",
    [
        opt(
            "cache_dir_vae",
            str,
            None,
            "image only: folder (or S3 prefix on 'aws') for this dataset's VAE latents; must "
            "differ between datasets. SimpleTuner's fallback: "
            "<output_dir>/cache/vae/<model_family>/<id>.",
        ),
        opt(
            "cache_dir",
            str,
            None,
            "text_embeds: folder for the text-encoder outputs (SimpleTuner's fallback: the "
            "run-wide cache_dir_text). On 'huggingface' datasets: the local download cache.",
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
            "skip_file_discovery",
            str,
            "",
            "Space- or comma-separated stages not to rescan at start-up once cached: 'vae', "
            "'aspect', 'metadata', 'text'. For very large datasets only.",
            unsupported="st_ray lists every dataset on each run; reusing a stale listing is not implemented yet",
        ),
        opt(
            "preserve_data_backend_cache",
            bool,
            False,
            "Keep the cached file listing instead of relisting the storage at start-up (slow "
            "or billed listings, e.g. S3). New files then go unseen.",
            unsupported="st_ray lists every dataset on each run; reusing a stale listing is not implemented yet",
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
            "write_batch_size",
            int,
            None,
            "Cache entries written per batch for this dataset. Unset: the run-wide "
            "write_batch_size.",
            minimum=1,
        ),
        opt(
            "text_encoder_batch_size",
            int,
            None,
            "text_embeds only: captions encoded per text-encoder call while filling this cache. "
            "Unset: the run-wide text_encoder_batch_size.",
            minimum=1,
        ),
        opt(
            "scan_for_errors",
            bool,
            False,
            "At start-up, check cached latents against the bucket metadata and repair "
            "mismatches (per vae_cache_scan_behaviour).",
            unsupported="cache consistency scans are not implemented yet; delete the cache "
            "folder to rebuild it",
        ),
        opt(
            "metadata_update_interval",
            int,
            None,
            "Seconds between metadata refreshes while training (for datasets that change mid-run).",
            minimum=1,
            unsupported="metadata is read once per run",
        ),
        opt(
            "vae_cache_ondemand",
            bool,
            False,
            "Encode missing latents during training instead of before it.",
            unsupported=_ONDEMAND,
        ),
        opt(
            "vae_cache_disable",
            bool,
            False,
            "Encode latents during training and never write them to disk.",
            unsupported=_ONDEMAND,
        ),
        opt(
            "text_cache_ondemand",
            bool,
            False,
            "text_embeds only: encode missing caption embeds during training.",
            unsupported=_ONDEMAND,
        ),
        opt(
            "text_cache_disable",
            bool,
            False,
            "text_embeds only: encode caption embeds during training and never write them.",
            unsupported=_ONDEMAND,
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
            "read_batch_size",
            int,
            None,
            "Files read per batch while caching (code only).",
            unsupported=_BATCHING,
        ),
        opt(
            "vae_batch_size",
            int,
            None,
            "Images per VAE call while caching (code only).",
            unsupported=_BATCHING,
        ),
        opt(
            "image_processing_batch_size",
            int,
            None,
            "Images resized/cropped per batch while caching (code only).",
            unsupported=_BATCHING,
        ),
        opt(
            "max_workers",
            int,
            None,
            "Threads used while caching (code only).",
            unsupported=_BATCHING,
        ),
        opt(
            "delete_unwanted_images",
            bool,
            False,
            "Delete source images that fail the size or aspect filters.",
            unsupported=_DELETE,
        ),
        opt(
            "delete_problematic_images",
            bool,
            False,
            "Delete source images that fail to encode.",
            unsupported=_DELETE,
        ),
        opt(
            "delete_nsfw_images",
            bool,
            False,
            "Delete samples rejected by the NSFW classifier.",
            unsupported=_DELETE,
        ),
    ],
)

_UNSUPPORTED_KINDS = _group(
    "Conditioning, video, audio and other dataset kinds",
    [
        opt(
            "conditioning_data",
            Json,
            None,
            "image only: id (or list of ids) of the conditioning datasets paired with it.",
            unsupported=_CONDITIONING,
        ),
        opt(
            "conditioning",
            Json,
            None,
            "Generators that derive conditioning datasets from these images (canny, depth, "
            "masks, superresolution, jpeg_artifacts...).",
            unsupported=_CONDITIONING,
        ),
        opt(
            "conditioning_type",
            str,
            None,
            "conditioning only: 'controlnet', 'mask', 'reference_strict' or 'reference_loose'.",
            choices=(None, "controlnet", "mask", "reference_strict", "reference_loose"),
            unsupported=_CONDITIONING,
        ),
        opt(
            "source_dataset_id",
            str,
            None,
            "conditioning only: the image dataset whose samples this one aligns with.",
            unsupported=_CONDITIONING,
        ),
        opt(
            "conditioning_image_embeds",
            str,
            None,
            "id of a conditioning_image_embeds dataset caching image-encoder features.",
            unsupported=_COND_EMBEDS,
        ),
        opt(
            "cache_dir_conditioning_image_embeds",
            str,
            None,
            "Folder for the conditioning image-encoder features.",
            unsupported=_COND_EMBEDS,
        ),
        opt(
            "conditioning_image_embed_batch_size",
            int,
            None,
            "Batch size while computing conditioning image embeds.",
            unsupported=_COND_EMBEDS,
        ),
        opt(
            "video",
            Json,
            None,
            "Video options: num_frames, min_frames, max_frames, is_i2v, bucket_strategy, "
            "frame_interval.",
            unsupported=_VIDEO,
        ),
        opt(
            "audio",
            Json,
            None,
            "Audio options (duration buckets, sample rate, channels, audio taken from video).",
            unsupported=_AUDIO,
        ),
        opt(
            "s2v_datasets",
            Json,
            None,
            "Audio datasets linked to a video dataset for sound-to-video training.",
            unsupported=_AUDIO,
        ),
        opt(
            "grounding",
            Json,
            None,
            "Per-entity bounding boxes/masks from .bbox sidecars or auto-detection.",
            unsupported=_GROUNDING,
        ),
        opt(
            "webshart",
            Json,
            None,
            "Options of a webshart backend (cache_dir, shard_cache_gb, parallel_downloads...).",
            unsupported=_WEBSHART,
        ),
        opt("source", str, None, "webshart only: the shard source.", unsupported=_WEBSHART),
        opt(
            "metadata",
            str,
            None,
            "webshart only: separate location of the shard metadata.",
            unsupported=_WEBSHART,
        ),
        opt(
            "webshart_optimize_captions",
            bool,
            False,
            "webshart only: coalesce caption sidecars at start-up.",
            unsupported=_WEBSHART,
        ),
        opt(
            "memory_filesystem_path",
            str,
            None,
            "memory only: mount point of the RAM filesystem.",
            unsupported=_MEMORY,
        ),
        opt(
            "memory_filesystem_size",
            str,
            None,
            "memory only: size of the RAM filesystem, e.g. '512G'.",
            unsupported=_MEMORY,
        ),
        opt(
            "memory_filesystem_sudo",
            bool,
            False,
            "memory only: mount through sudo.",
            unsupported=_MEMORY,
        ),
    ],
)

FIELDS: list[Option] = [
    *_IDENTITY,
    *_LOCAL,
    *_AWS,
    *_CSV,
    *_HUB,
    *_METADATA,
    *_SIZES,
    *_SAMPLING,
    *_CACHES,
    *_UNSUPPORTED_KINDS,
]

PARQUET_FIELDS: list[Option] = _group(
    "parquet block",
    [
        opt(
            "path",
            str,
            None,
            "The table: a .parquet file, or JSON Lines (.jsonl) / JSON (.json). Required. "
            "SimpleTuner reads it through the dataset's own storage backend.",
        ),
        opt(
            "filename_column",
            str,
            None,
            "Column identifying each image. Unset: the run-wide parquet_filename_column, else "
            "'id'.",
        ),
        opt(
            "identifier_includes_extension",
            bool,
            False,
            "true when filename_column holds names with their extension, matched as paths "
            "relative to the dataset folder; false matches the bare file stem (the image is "
            "then assumed to be '<id>.png' when a name must be built).",
        ),
        opt(
            "caption_column",
            str,
            None,
            "Column with the captions (SimpleTuner also takes a list of columns, or a column "
            "of string lists, as several captions). Unset: the run-wide "
            "parquet_caption_column, else 'description'.",
        ),
        opt(
            "fallback_caption_column",
            str,
            None,
            "Column used where the caption is null or empty.",
        ),
        opt("width_column", str, "width", "Column with each image's width in pixels."),
        opt("height_column", str, "height", "Column with each image's height in pixels."),
        opt(
            "aspect_ratio_column",
            str,
            None,
            "Column with a precomputed aspect ratio used for bucketing (code only).",
            unsupported="aspect ratios are computed from width and height",
        ),
        opt("bbox_column", str, None, "Column with bounding boxes.", unsupported=_GROUNDING),
        opt("num_frames_column", str, None, "Column with video frame counts.", unsupported=_VIDEO),
        opt("fps_column", str, None, "Column with video frame rates.", unsupported=_VIDEO),
    ],
)

HUGGINGFACE_FIELDS: list[Option] = _group(
    "huggingface block",
    [
        opt(
            "dataset_name",
            str,
            None,
            "Hub dataset id; the top-level dataset_name takes precedence.",
        ),
        opt("split", str, "train", "Split to load; the top-level split takes precedence."),
        opt("revision", str, None, "Dataset revision; the top-level revision takes precedence."),
        opt(
            "image_column",
            str,
            "image",
            "Column holding the images; the top-level image_column takes precedence.",
        ),
        opt(
            "caption_column",
            str,
            "caption",
            "Column with the captions; dotted names reach into nested fields ('meta.caption'). "
            "SimpleTuner also takes a list of columns.",
        ),
        opt(
            "fallback_caption_column",
            str,
            None,
            "Column used where the caption is missing or empty.",
        ),
        opt(
            "description_column",
            str,
            "description",
            "Column with a longer description some caption modes use.",
            no_effect="st_ray captions from caption_column and fallback_caption_column only",
        ),
        opt(
            "width_column",
            str,
            None,
            "Column with image widths; unset: read the size from the image itself.",
        ),
        opt(
            "height_column",
            str,
            None,
            "Column with image heights; unset: read the size from the image itself.",
        ),
        opt(
            "cache_dir",
            str,
            None,
            "Local folder for downloaded dataset files. Unset: <cache_dir>/huggingface/<id>.",
        ),
        opt(
            "num_proc",
            int,
            16,
            "Processes used when filtering the dataset.",
            minimum=1,
            no_effect="Ray Data parallelises the work instead of datasets' worker processes",
        ),
        opt(
            "file_extension",
            str,
            "jpg",
            "Extension of the virtual file names ('<row index>.<ext>') given to rows.",
        ),
        opt(
            "auto_load",
            bool,
            False,
            "Load the dataset as soon as the backend is created instead of on first use.",
            no_effect="st_ray loads the dataset when the caching stage lists it, once per run",
        ),
        opt(
            "streaming",
            bool,
            False,
            "Stream the dataset.",
            unsupported="not functional in SimpleTuner either: buckets need every row's metadata",
        ),
        opt(
            "filter_func",
            Json,
            None,
            "Row filters: collection (list), min_width, min_height, quality_thresholds "
            "({metric: minimum}) with quality_column.",
            unsupported="Hub dataset filtering is not implemented yet",
        ),
        opt(
            "quality_column",
            str,
            "quality_assessment",
            "Column holding the quality scores filter_func.quality_thresholds checks.",
            unsupported="Hub dataset filtering is not implemented yet",
        ),
        opt(
            "composite_image_config",
            Json,
            None,
            "Split grid images: {enabled, image_count, select_index}.",
            unsupported="composite (grid) image splitting is not implemented yet",
        ),
        opt("video_column", str, "video", "Column holding videos.", unsupported=_VIDEO),
        opt("num_frames_column", str, None, "Column with frame counts.", unsupported=_VIDEO),
        opt("fps_column", str, None, "Column with frame rates.", unsupported=_VIDEO),
        opt("bbox_column", str, None, "Column with bounding boxes.", unsupported=_GROUNDING),
        opt("lyrics_column", str, "lyrics", "Column with song lyrics.", unsupported=_AUDIO),
        opt(
            "audio_caption_fields",
            Json,
            None,
            "Columns joined into an audio prompt (SimpleTuner default ['prompt', 'tags']).",
            unsupported=_AUDIO,
        ),
    ],
)
