"""Dataset fields: image metadata and captions (strategies, instance prompts, model captioning)."""

from __future__ import annotations

from st_ray.config.dataset_fields.common import WEBSHART, group
from st_ray.config.schema import Json, Option, opt

METADATA: list[Option] = group(
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
            unsupported_values={"webshart": WEBSHART},
        ),
        opt(
            "parquet",
            Json,
            None,
            "Parquet/JSONL metadata table for metadata_backend 'parquet' or caption_strategy "
            "'parquet' (see PARQUET_FIELDS).",
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
            "Tag-order augmentation: {enable, count (default 1), seed (default: the run's), "
            "split_on: comma|space|period (default comma), position_start (tags kept in "
            "place, default 0), include_original (default true)}. Each caption gets count "
            "shuffled variants (deterministic per caption and seed) before the instance prompt "
            "is prepended; every variant is embedded at caching time and training picks one "
            "per step like any multi-caption image.",
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
