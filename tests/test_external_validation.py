"""External validation scripts (validation_method external-script) with a tiny Python script."""

from __future__ import annotations

import sys
from pathlib import Path

from st_ray.train.external_validation import ExternalValidation, problems

SCRIPT = "import sys, time\nprint('args', *sys.argv[2:])\ntime.sleep(float(sys.argv[1]))\n"


def _external(tmp_path: Path, tail: str, **kwargs) -> tuple[ExternalValidation, list[str]]:
    script = tmp_path / "validate.py"
    script.write_text(SCRIPT + "sys.exit(int(sys.argv[2]) % 3)\n")
    lines: list[str] = []
    template = f"{sys.executable} {script} {tail}"
    values = {"model_family": "fam", "validation_prompt": "a cat"}
    return ExternalValidation(template, values, log=lines.append, **kwargs), lines


def test_foreground_fills_placeholders_logs_output_and_exit_code(tmp_path: Path) -> None:
    external, lines = _external(
        tmp_path,
        "0 {global_step} {local_checkpoint_path} {model_family} '{validation_prompt}'",
        background=False,
    )
    assert external.run(3, "/runs/checkpoint-3")
    assert "[validation_external_script] args 3 /runs/checkpoint-3 fam a cat" in lines
    assert external.run(4, "/runs/checkpoint-4") is False  # exits 4 % 3 = 1
    assert external.exit_codes == {3: 0, 4: 1}
    assert any("exited with 1" in line and "training goes on" in line for line in lines)
    assert external.run(4, "/runs/checkpoint-4")  # a step runs once (interval and final)
    assert external.run(6, None) is False  # no checkpoint yet: skipped, said why
    assert "skipped: no checkpoint saved yet" in lines[-1]


def test_timeout_and_missing_program_never_raise(tmp_path: Path) -> None:
    external, lines = _external(tmp_path, "5 {global_step}", background=False, timeout_s=0.5)
    assert external.run(3, "/c") is False and "killed after 0.5 s" in lines[-1]
    missing = ExternalValidation(
        "/no/such/program {global_step}", {}, background=False, log=lines.append
    )
    assert missing.run(1, "/c") is False and "cannot start" in lines[-1]


def test_background_does_not_wait(tmp_path: Path) -> None:
    external, lines = _external(tmp_path, "0.5 {global_step}", background=True)
    assert external.run(3, "/c")
    assert not any(line.startswith("[validation_external_script]") for line in lines)
    external.close()  # waits for the queued script
    assert "[validation_external_script] args 3" in lines


def test_the_script_is_required_and_checked() -> None:
    method = {"validation_method": "external-script"}
    assert problems({}) == []
    assert "needs the command" in problems(method)[0][1]
    bad = problems({**method, "validation_external_script": "run {nope}"})
    assert bad[0][0] == "validation_external_script" and "unknown placeholder" in bad[0][1]
    assert problems({**method, "validation_external_script": "run {global_step}"}) == []
