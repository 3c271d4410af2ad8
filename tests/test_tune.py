"""Ray Tune campaigns: sweep files checked before anything runs, and one small campaign end to
end (ASHA, 2 concurrent trials, storage on a real S3 server) interrupted and resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from st_ray import zoo
from st_ray.jobs.tune import prepare
from st_ray.tune.sweep import SweepError, parse_sweep
from tests.eval_fixtures import write_eval_config

# On the tiny sd1x model 3e-2 learns (eval loss 1.06 -> 1.01 in 6 steps); 1e4 diverges at once
# (non-finite eval loss at step 2, reported as inf: stopped at the next report).
GOOD_LR, BAD_LR = 3e-2, 1e4


def _sweep(tmp: Path, **fields) -> Path:
    path = tmp / "sweep.json"
    path.write_text(json.dumps({"search_space": {"learning_rate": 1e-4}, **fields}))
    return path


def _config(tmp: Path, zoo_root: Path, example_dataset, **options) -> Path:
    model = zoo.ensure("sd1x", zoo_root)
    return write_eval_config(
        tmp, model, example_dataset.images_dir, example_dataset.images_dir, **options
    )


def test_sweep_problems_name_their_key(tmp_path: Path, zoo_root, example_dataset) -> None:
    config = _config(tmp_path, zoo_root, example_dataset, eval_steps_interval=2)
    sweep = _sweep(
        tmp_path,
        serach="grid",
        num_samples=0,
        search_space={
            "learning_rat": {"loguniform": [1e-5, 1e-3]},
            "resolution": {"choice": [512, 1024]},
            "text_encoder_1_precision": {"choice": ["no_change", "int8-quanto"]},
            "lora_rank": {"loguniform": [4, 16]},
            "learning_rate": {"loguniform": [0, 1e-3]},
            "optimizer": {"choice": ["adamw_bf16", "adamw_bf17"]},
            "snr_gamma": {"normal": [1, 2]},
        },
        scheduler={"type": "asha", "grace": 2},
    )
    with pytest.raises(SweepError) as err:
        prepare(config, sweep, [])
    text = err.value.render()
    for expected in (
        "serach: unknown sweep key 'serach'; did you mean 'search'?",
        "num_samples: expected an integer >= 1",
        "search_space.learning_rat: unknown option 'learning_rat'; did you mean 'learning_rate'?",
        "search_space.resolution: 'resolution' changes the caches",
        "search_space.text_encoder_1_precision: 'text_encoder_1_precision' changes the caches",
        "search_space.lora_rank: 'lora_rank' takes integers",
        "search_space.learning_rate: 'loguniform' needs low > 0",
        "search_space.optimizer: value 'adamw_bf17': 'adamw_bf17' is not allowed",
        "search_space.snr_gamma: expected a value or an object with one key of choice",
        "scheduler.grace: unknown scheduler key 'grace'",
    ):
        assert expected in text, text


def test_sweep_values_pass_the_run_configs_own_checks(
    tmp_path: Path, zoo_root, example_dataset
) -> None:
    config = _config(tmp_path, zoo_root, example_dataset, eval_steps_interval=2)
    # A supported choice that the run config refuses in combination (rules between options).
    sweep = _sweep(
        tmp_path,
        search_space={"lora_type": {"choice": ["standard", "lycoris"]}},
        metric="loss",
        scheduler="none",
    )
    with pytest.raises(SweepError) as err:
        prepare(config, sweep, ["--use_dora"])
    assert "search_space.lora_type: value 'lycoris'" in err.value.render()
    # The metric needs what it measures.
    (tmp_path / "b").mkdir()
    no_eval = _config(tmp_path / "b", zoo_root, example_dataset)
    json_path = Path(json.loads(no_eval.read_text())["data_backend_config"])
    json_path.write_text(
        json.dumps(
            [d for d in json.loads(json_path.read_text()) if d.get("dataset_type") != "eval"]
        )
    )
    with pytest.raises(SweepError) as err:
        prepare(no_eval, _sweep(tmp_path), [])
    assert "metric: 'eval_loss' needs an evaluation dataset" in err.value.render()
    with pytest.raises(SweepError, match="search 'grid' takes only"):
        parse_sweep({"search": "grid", "search_space": {"lora_rank": {"choice": [4, 8]}}})


def test_early_stop_is_a_request_the_trial_acts_on(ray_local) -> None:
    """ASHA's stop (and any diverged result) becomes a request on the stop board; Tune is
    told to continue, so the trial ends itself and its Train run shuts down cleanly."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from st_ray.tune.stopping import GracefulASHA, board_name, is_requested, start_board

    name = board_name("unit")
    board = start_board(name)
    scheduler = GracefulASHA(
        board=name,
        time_attr="step",
        max_t=8,
        grace_period=2,
        reduction_factor=2,
        stop_last_trials=False,
    )
    scheduler.set_search_properties("eval_loss", "min")
    good, worse, diverged = (Trial("fn", trial_id=i, stub=True) for i in ("a", "b", "c"))
    for trial in (good, worse, diverged):
        scheduler.on_trial_add(None, trial)
    assert scheduler.on_trial_result(None, good, {"step": 2, "eval_loss": 1.0}) == "CONTINUE"
    assert scheduler.on_trial_result(None, worse, {"step": 2, "eval_loss": 2.0}) == (
        TrialScheduler.CONTINUE
    )
    assert scheduler.on_trial_result(None, diverged, {"step": 2, "eval_loss": float("inf")}) == (
        TrialScheduler.CONTINUE
    )
    assert [is_requested(name, t) for t in ("a", "b", "c")] == [False, True, True]
    assert scheduler.stopping == {"b", "c"}
    del board


# ------------------------------------------------------------------------- the campaign


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _interrupt_when(path: Path, finished: int, stop: threading.Event) -> threading.Thread:
    """Send SIGUSR1 (Tune's graceful stop, like Ctrl+C) once ``finished`` trials ended."""

    def watch() -> None:
        while not stop.is_set():
            rows = _read_rows(path)
            if sum(r["status"] == "TERMINATED" for r in rows) >= finished:
                os.kill(os.getpid(), signal.SIGUSR1)
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _train_objects(client, bucket: str, prefix: str) -> dict[str, str]:
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["ETag"] + str(o["LastModified"]) for o in listing}


def test_campaign_on_s3_stops_bad_trials_and_resumes(
    tmp_path: Path, eval_setup, ray_local, s3_server, monkeypatch
) -> None:
    import diffusers
    import mlflow
    import ray

    from st_ray.jobs.tune import run
    from st_ray.tune import campaign, results

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    model = eval_setup.model
    config = write_eval_config(
        tmp_path,
        model,
        eval_setup.images,
        eval_setup.eval_images,
        cache_root=eval_setup.root,  # the caches are already built: the campaign reuses them
        # Long enough for a stop decision to reach a trial (Tune sees a report ~seconds
        # after the step that made it) even when the steps are fast.
        max_train_steps=24,
        eval_steps_interval=2,
        checkpoint_step_interval=8,
        eval_timesteps=4,
        caption_dropout_probability=0,
        validation_disable=True,
    )
    bucket = s3_server.create_bucket()
    sweep_path = tmp_path / "sweep.json"
    sweep_path.write_text(
        json.dumps(
            {
                "name": "lr-rank",
                "search_space": {
                    "learning_rate": {"grid": [GOOD_LR, BAD_LR]},
                    "lora_rank": {"grid": [4, 8]},
                },
                "search": "grid",
                "scheduler": {"type": "asha", "grace_period": 4, "reduction_factor": 2},
                "max_concurrent_trials": 2,
                "resources_per_trial": {"workers": 1, "cpus_per_worker": 0.9},
                "storage_path": f"s3://{bucket}/campaigns",
            }
        )
    )
    plan, sweep = prepare(config, sweep_path, ["--s3_endpoint_url", s3_server.endpoint_url])
    folder = campaign.Campaign(plan, sweep).local_dir
    client = s3_server.client()

    started = time.perf_counter()
    stop = threading.Event()
    watcher = _interrupt_when(folder / results.TABLE_CSV, 2, stop)
    assert run(plan, sweep) == 3  # interrupted
    stop.set()
    watcher.join()
    first = {r["trial_id"]: r for r in _read_rows(folder / results.TABLE_CSV)}
    done_first = [t for t, r in first.items() if r["status"] == "TERMINATED"]
    assert len(done_first) >= 2
    before = {
        t: _train_objects(client, bucket, f"campaigns/lr-rank/train/{t}/") for t in done_first
    }
    assert all(before.values())  # their checkpoints are in the campaign storage

    with pytest.raises(SweepError, match="already exists"):
        campaign.run(plan, sweep)
    assert run(plan, sweep, resume=True) == 0
    elapsed = time.perf_counter() - started

    rows = json.loads((folder / results.TABLE_JSON).read_text())["trials"]
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows)
    by_id = {r["trial_id"]: r for r in rows}
    for trial_id in done_first:  # finished trials were not rerun
        assert by_id[trial_id]["starts"] == 1
        after = _train_objects(client, bucket, f"campaigns/lr-rank/train/{trial_id}/")
        assert after == before[trial_id]
    bad = [r for r in rows if r["config"]["learning_rate"] == BAD_LR]
    good = [r for r in rows if r["config"]["learning_rate"] == GOOD_LR]
    assert all(r["stopped_early"] and r["steps"] < 24 for r in bad), rows
    assert any(r["steps"] == 24 for r in good)
    assert rows[0]["config"]["learning_rate"] == GOOD_LR  # sorted by eval loss
    assert all(r["metric"] == float("inf") for r in bad)  # diverged, ranked last
    assert rows[0]["checkpoint"].startswith(f"s3://{bucket}/campaigns/lr-rank/train/")
    print(
        f"\ncampaign wall time {elapsed:.1f}s; stopped early: "
        f"{sum(r['stopped_early'] for r in rows)}; table:\n"
        + results.format_table([dict(r) for r in rows], "eval_loss")
    )

    # Table, plot and best weights: local and in the campaign storage.
    assert (folder / results.PLOT).stat().st_size > 1000
    keys = _train_objects(client, bucket, "campaigns/lr-rank/")
    for name in (results.TABLE_CSV, results.TABLE_JSON, results.PLOT):
        assert f"campaigns/lr-rank/{name}" in keys
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model)
    pipe.load_lora_weights(str(folder / results.BEST))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    assert (
        json.loads((folder / results.BEST / "best_trial.json").read_text())["trial_id"]
        == (rows[0]["trial_id"])
    )

    # MLflow: one parent run, one child per trial.
    mlflow.set_tracking_uri(plan.tracking_uri)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.data.tags.get(campaign.CAMPAIGN_TAG) == "lr-rank"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "best_eval_loss" in parents[0].data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert {r.info.run_name for r in children} == set(by_id)

    # Early-stopped and finished trials ended their Train runs, which gave their workers back.
    # Trials killed by the interruption lose their Ray Train controller with the trial actor;
    # Ray Train's placement-group cleaner needs the State API (dashboard), off in the test
    # cluster, so their reservations stay until this driver exits (a CLI run exits).
    interrupted = sum(r["starts"] > 1 for r in rows)
    deadline = time.time() + 30
    expected = 2 - 0.9 * interrupted
    while ray.available_resources().get("CPU", 0) < expected - 1e-6 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) >= expected - 1e-6
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    for pg_id, info in ray.util.placement_group_table().items():
        if info["state"] == "CREATED":  # give the session's other tests their CPUs back
            pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id)))
            ray.util.remove_placement_group(pg)
