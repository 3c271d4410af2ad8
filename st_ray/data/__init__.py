"""Dataset discovery, decoding, aspect bucketing and the latent/text-embed caches."""
