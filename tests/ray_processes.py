"""Ray clusters that tests start in processes of their own (a ``ray start --head``, or a
multi-node ``ray.cluster_utils.Cluster`` in a scenario script), isolated from the session's
``ray_local`` instance and from any other Ray on the machine:

- a private, short RAY_TMPDIR: ``ray.init()`` elsewhere never finds these clusters through
  ``<tmp>/ray/ray_current_cluster``, and their sockets stay under the path-length limit;
- loopback addresses only (Ray otherwise advertises the machine's outward address);
- token authentication with a token of their own (Ray 2.60 turns it on for ``ray start``
  when ``~/.ray/auth_token`` exists; an explicit mode keeps the tests independent of that);
- the worktree first on PYTHONPATH, so every Ray worker imports this checkout's st_ray;
- processes ended by their own process group, never by name (``ray stop`` would end every
  Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def isolated_env(ray_tmp: Path, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_TMPDIR": str(ray_tmp),
        # Ray's switch for "no multi-node on this OS" is also what keeps the node address on
        # loopback (services.get_node_ip_address); cluster_utils nodes still form a cluster.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        # The job's `python` is this venv's, as on a cluster whose image installs st_ray.
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }
    env.pop("RAY_ADDRESS", None)
    return env


@contextlib.contextmanager
def private_ray_tmp() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="str", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def end_process_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """SIGTERM the group ``process`` leads (it was started in a session of its own), then
    SIGKILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def end_leftovers(ray_tmp: Path) -> None:
    """Ray processes that left the group but still name the private temp dir (by pid)."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(str(ray_tmp) in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def head_isolation_flags(num_cpus: int) -> tuple[int, list[str]]:
    """(dashboard port, ``ray start --head`` flags): loopback, free ports, a CPU count."""
    dashboard = free_port()
    ports = {
        "--port": free_port(),
        "--dashboard-port": dashboard,
        "--ray-client-server-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--metrics-export-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    flags = ["--disable-usage-stats", "--dashboard-host", "127.0.0.1", "--num-cpus", str(num_cpus)]
    return dashboard, flags + [str(x) for kv in ports.items() for x in kv]


@contextlib.contextmanager
def ray_head(num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """``ray start --head --block`` on loopback ports; yields (dashboard URL, environment for
    ``ray job`` commands). The head and its children share one process group, ended at exit."""
    with private_ray_tmp() as ray_tmp:
        env = isolated_env(ray_tmp)
        dashboard, flags = head_isolation_flags(num_cpus)
        command = [str(BIN / "ray"), "start", "--head", "--block", *flags]
        log = open(ray_tmp / "head.log", "wb")  # noqa: SIM115 (closed below)
        head = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{dashboard}"
        try:
            wait_for_job_server(url, env, head, ray_tmp / "head.log")
            yield url, {**env, "RAY_API_SERVER_ADDRESS": url}
        finally:
            end_process_group(head)
            end_leftovers(ray_tmp)
            log.close()


def wait_for_job_server(
    url: str, env: dict[str, str], head: subprocess.Popen | None, log: Path, token: str = ""
) -> None:
    """Until the head's job server answers (it starts a few seconds after the GCS)."""
    import urllib.request

    token = token or env["RAY_AUTH_TOKEN"]
    request = urllib.request.Request(
        f"{url}/api/version", headers={"Authorization": f"Bearer {token}"}
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        ended = head is not None and head.poll() is not None
        if ended or time.monotonic() > deadline:
            raise RuntimeError(f"the Ray head did not come up:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)


def fresh_shell_env(ray_tmp: Path, home: Path) -> dict[str, str]:
    """A user's fresh shell after ``make demo``: ``~/.ray/auth_token`` exists (``ray.init()``
    wrote it), RAY_AUTH_MODE and RAY_AUTH_TOKEN are unset. HOME is private to the test."""
    token = home / ".ray" / "auth_token"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text(secrets.token_hex(32))
    env = isolated_env(ray_tmp, HOME=str(home))
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def shell_ray_head(lines: list[str], num_cpus: int = 2) -> Iterator[tuple[str, dict[str, str]]]:
    """Run shell ``lines`` (a README's, which start a head with ``ray start --head``) in a
    fresh shell (``fresh_shell_env``); the ``ray start --head`` line gets loopback ports and a
    CPU count appended. Yields (dashboard URL, the shell's environment after the lines, for
    later ``ray job`` commands). Every Ray process of the head is ended at exit."""
    with private_ray_tmp() as ray_tmp:
        env = fresh_shell_env(ray_tmp, ray_tmp / "home")
        dashboard, flags = head_isolation_flags(num_cpus)
        script = [
            f"{line} {' '.join(flags)}" if line.strip() == "ray start --head" else line
            for line in lines
        ]
        script = ["set -e", *script, "printf '\\0--env--\\0'", "env -0"]
        log, out = ray_tmp / "head.log", ray_tmp / "shell.out"
        try:
            # Output to files, not pipes: the head's daemons inherit them and outlive the shell.
            with open(log, "wb") as err, open(out, "wb") as std:
                done = subprocess.run(
                    ["bash", "-c", "\n".join(script)],
                    cwd=REPO,
                    env=env,
                    stdout=std,
                    stderr=err,
                    timeout=300,
                )
            if done.returncode != 0:
                raise RuntimeError(f"the shell lines failed:\n{log.read_text()[-3000:]}")
            after = out.read_bytes().split(b"\0--env--\0", 1)[1].decode()
            shell_env = dict(item.split("=", 1) for item in after.split("\0") if "=" in item)
            url = f"http://127.0.0.1:{dashboard}"
            token = (ray_tmp / "home" / ".ray" / "auth_token").read_text()
            wait_for_job_server(url, shell_env, None, log, token)
            yield url, shell_env
        finally:
            end_leftovers(ray_tmp)
