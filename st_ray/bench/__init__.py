"""Benchmarks of st_ray's stages: ``python -m st_ray.bench cache``."""
