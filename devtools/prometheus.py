"""A private Prometheus server scraping the local Ray cluster, owned by whoever starts it.

It reads the scrape targets Ray's metrics agent keeps for Prometheus (file-based service
discovery in the session directory of the Ray cluster serving the cascade), listens on a free port
of 127.0.0.1, keeps its data in a temporary directory and is stopped (SIGTERM, then SIGKILL) by its
owner: a test, or

    python -m devtools.prometheus                 # prints its URL; Ctrl-C or SIGTERM stops it
    python -m serve_app.ops.report --prometheus http://127.0.0.1:PORT --plot cascade.png

Debian packages the server (`apt-get install prometheus`; `make servers` does it). Nothing here
touches a Prometheus the machine already runs.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import psutil
import yaml

from devtools import local_stack
from devtools.local_stack import DEFAULT_URL, interrupt

DISCOVERY_FILE_NAME = "prom_metrics_service_discovery.json"
SCRAPE_INTERVAL_S = 2.0
# How often Prometheus re-reads the discovery file besides its inotify watch.
DISCOVERY_REFRESH_S = 5.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
LOG_TAIL_CHARS = 4000


class PrometheusNotInstalledError(RuntimeError):
    """No `prometheus` binary on PATH."""


def stack_session_dir(base_url: str = DEFAULT_URL) -> Path:
    """Session directory of the Ray cluster serving `base_url`.

    Not `/tmp/ray/session_latest`: that is the most recently started cluster on the machine
    (a test's private Ray, someone else's stack). The process listening on the HTTP port is
    Serve's proxy actor, a descendant of its node's raylet, which is given `--session_dir`.
    """
    port = urlsplit(base_url).port or 80
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status != psutil.CONN_LISTEN or connection.laddr.port != port:
            continue
        process: psutil.Process | None = psutil.Process(connection.pid)
        while process is not None:
            for arg in process.cmdline():
                if arg.startswith("--session_dir="):
                    return Path(arg.split("=", 1)[1])
            process = process.parent()
    raise RuntimeError(f"no local Ray cluster found serving {base_url}")


def ray_discovery_file(session_dir: Path) -> Path:
    """The file a Ray session's metrics agent writes its scrape targets to.

    Ray 2.60 replaces `<session dir>/prom_metrics_service_discovery.json` atomically, and every
    running cluster keeps re-pointing the symlink `/tmp/ray/prom_metrics_service_discovery.json`
    at its own file, so with two clusters on the machine only the session's file is right.
    Prometheus watches the directory of the path it is given: the real one.
    """
    return (session_dir / DISCOVERY_FILE_NAME).resolve()


def prometheus_config(discovery_file: Path, scrape_interval_s: float) -> str:
    """prometheus.yml: one job, `ray`, whose targets are the ones Ray lists."""
    interval = f"{scrape_interval_s:g}s"
    config = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "scrape_configs": [
            {
                "job_name": "ray",
                "file_sd_configs": [
                    {
                        "files": [str(discovery_file)],
                        "refresh_interval": f"{DISCOVERY_REFRESH_S:g}s",
                    }
                ],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


class PrometheusServer:
    """One Prometheus process on 127.0.0.1, ready (`/-/ready`) when the constructor returns.

    `directory` holds its config, log and data; `stop()` (or leaving the `with` block) ends it.
    """

    def __init__(
        self,
        directory: Path,
        discovery_file: Path,
        *,
        port: int | None = None,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ):
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusNotInstalledError(
                "prometheus is not installed: run `make servers` (Debian's prometheus package)"
            )
        self.discovery_file = discovery_file
        if not self.discovery_file.exists():
            raise FileNotFoundError(
                f"no Ray scrape targets at {self.discovery_file}: is a local Ray cluster running?"
            )
        self.scrape_interval_s = scrape_interval_s
        self.port = port or local_stack.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(prometheus_config(self.discovery_file, scrape_interval_s))
        self.log_path = directory / "prometheus.log"
        command = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.started_at_s = time.time()
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        try:
            local_stack.wait_http_ok(self.process, f"{self.url}/-/ready", timeout_s, 0.1)
        except (RuntimeError, TimeoutError) as e:
            raise type(e)(f"prometheus: {e}:\n{self.log_tail()}") from None

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]

    def stop(self) -> None:
        """SIGTERM (Prometheus closes its TSDB cleanly), SIGKILL after STOP_TIMEOUT_S."""
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> PrometheusServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.prometheus",
        description="Run a private Prometheus that scrapes the local Ray cluster (the targets "
        "Ray writes for Prometheus) until Ctrl-C or SIGTERM, for `python -m "
        "serve_app.ops.report --prometheus URL`.",
    )
    parser.add_argument(
        "--stack-url",
        default=DEFAULT_URL,
        help="the cascade's HTTP address: scrape the local Ray cluster serving it",
    )
    parser.add_argument(
        "--discovery-file",
        type=Path,
        help=f"Ray's scrape targets instead (a session directory's {DISCOVERY_FILE_NAME})",
    )
    parser.add_argument("--port", type=int, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="config, log and data (default: a temporary directory, removed at the end)",
    )
    parser.add_argument(
        "--scrape-interval-s", type=float, default=SCRAPE_INTERVAL_S, help="scrape interval"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        discovery_file = args.discovery_file or ray_discovery_file(
            stack_session_dir(args.stack_url)
        )
    except RuntimeError as e:
        print(f"{e}: start it (make run) or pass --discovery-file", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    with tempfile.TemporaryDirectory(prefix="cascade-prometheus-") as scratch:
        server = PrometheusServer(
            args.data_dir or Path(scratch),
            discovery_file,
            port=args.port,
            scrape_interval_s=args.scrape_interval_s,
        )
        try:
            print(f"prometheus on {server.url} scraping {server.discovery_file}", flush=True)
            print(f"  python -m serve_app.ops.report --prometheus {server.url}", flush=True)
            print(f"log: {server.log_path} (Ctrl-C stops)", flush=True)
            return server.process.wait()
        except KeyboardInterrupt:
            print("stopping", flush=True)
            return 0
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
