"""Secrets never reach output: declared-secret names, credential-looking keys, URLs with
credentials and token-shaped values are redacted, recursively."""

from st_ray.config.redact import REDACTED, redact


def test_declared_and_named_secrets() -> None:
    data = {
        "webhook_config": {"url": "https://discord.com/api/webhooks/1/abc"},
        "hf_token": "hf_abcdefghijklmnop",
        "aws_secret_access_key": "s3cr3t",
        "lora_rank": 16,
        "nested": [{"api_key": "k"}, {"prompt": "a cat"}],
    }
    out = redact(data, ["webhook_config"])
    assert out["webhook_config"] == REDACTED
    assert out["hf_token"] == REDACTED
    assert out["aws_secret_access_key"] == REDACTED
    assert out["lora_rank"] == 16
    assert out["nested"] == [{"api_key": REDACTED}, {"prompt": "a cat"}]
    assert data["hf_token"] == "hf_abcdefghijklmnop"  # the input is not modified


def test_values_that_look_secret() -> None:
    assert redact("http://user:pass@127.0.0.1:5000/x") == f"http://{REDACTED}@127.0.0.1:5000/x"
    assert redact("hf_abcdefghijklmnopqrstu") == REDACTED
    assert redact("AKIAABCDEFGHIJKLMNOP") == REDACTED
    assert redact("s3://bucket/prefix") == "s3://bucket/prefix"


def test_unset_secrets_stay_visible_as_unset() -> None:
    assert redact({"webhook_config": None, "token": ""}) == {"webhook_config": None, "token": ""}
