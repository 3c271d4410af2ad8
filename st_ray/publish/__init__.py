"""Publishing a run's results: the Hugging Face Hub (``push_to_hub``), S3-compatible
``publishing_config`` targets, and the checks of those options.

Modules: ``hub`` (HfApi pushes), ``providers`` (publishing_config entries and S3 targets),
``publisher`` (the run's upload queue, background thread and ``on_uploaded`` callbacks),
``retry`` (backoff on transient failures), ``checks`` (--dry-run refusals).
"""
