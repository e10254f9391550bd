"""Pure rendering of the local cluster's configuration files.

Nothing here touches the disk or starts a process: `ClusterSpec` describes the cluster, and each
`render_*` function turns it into the text of one file. `daemons.py` writes the files and starts
the daemons. Keeping the two apart lets tests check the configuration without root or Slurm.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_STATE_DIR = "/tmp/vit-dt-cluster"
STATE_DIR_ENV = "VIT_DT_CLUSTER_DIR"
DEFAULT_BASE_PORT = 16817
BASE_PORT_ENV = "VIT_DT_CLUSTER_PORT"

# A unix socket path longer than this cannot be bound (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class NodeSpec:
    """One fake compute node: its own slurmd on its own port, all on 127.0.0.1."""

    name: str
    partition: str
    cpus: int
    gpus: int
    port: int


@dataclass(frozen=True)
class ClusterSpec:
    """What the local cluster looks like and where it keeps its state.

    Ports are derived from `base_port` so one number moves the whole cluster out of the way of
    another Slurm (the packaged defaults are 6817-6819).
    """

    state_dir: Path = field(default_factory=lambda: Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR))
    cluster_name: str = "vitdt"
    cpu_nodes: int = 4
    gpu_nodes: int = 2
    cpus_per_node: int = 4
    gpus_per_node: int = 2
    # Declared, not real: config_overrides lets a node claim it. Large enough for `--mem` requests.
    mem_mb_per_node: int = 8000
    max_time_min: int = 240
    # A second cluster beside the first (e.g. a test session that must not disturb a shared one)
    # needs its own state dir and base port: $VIT_DT_CLUSTER_DIR and $VIT_DT_CLUSTER_PORT.
    base_port: int = field(default_factory=lambda: int(os.environ.get(BASE_PORT_ENV) or DEFAULT_BASE_PORT))

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir).absolute())
        for name in ("cpu_nodes", "cpus_per_node", "mem_mb_per_node", "max_time_min"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClusterSpec.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("gpu_nodes", "gpus_per_node"):
            if getattr(self, name) < 0:
                raise ValueError(f"ClusterSpec.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.gpu_nodes > 0 and self.gpus_per_node == 0:
            raise ValueError("ClusterSpec.gpu_nodes > 0 needs gpus_per_node >= 1, got gpus_per_node=0")
        last_port = self.slurmd_base_port + self.cpu_nodes + self.gpu_nodes
        if not (1024 <= self.base_port and last_port <= 65535):
            raise ValueError(f"ClusterSpec.base_port={self.base_port} puts ports outside 1024..65535")
        if not self.cluster_name.isalnum() or not self.cluster_name.islower():
            raise ValueError(f"ClusterSpec.cluster_name must be lower-case letters/digits, got {self.cluster_name!r}")
        if len(str(self.munge_socket)) > MAX_SOCKET_PATH or len(str(self.db_socket)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"ClusterSpec.state_dir={str(self.state_dir)!r} is too long: unix sockets under it would "
                f"exceed {MAX_SOCKET_PATH} bytes; choose a shorter directory"
            )

    # --- ports -------------------------------------------------------------------------------------
    @property
    def slurmctld_port(self) -> int:
        return self.base_port

    @property
    def slurmdbd_port(self) -> int:
        return self.base_port + 2

    @property
    def db_port(self) -> int:
        return self.base_port + 3

    @property
    def slurmd_base_port(self) -> int:
        return self.base_port + 10

    # --- nodes -------------------------------------------------------------------------------------
    @property
    def nodes(self) -> list[NodeSpec]:
        cpu = [
            NodeSpec(f"c{i}", "cpu", self.cpus_per_node, 0, self.slurmd_base_port + i - 1)
            for i in range(1, self.cpu_nodes + 1)
        ]
        gpu = [
            NodeSpec(f"g{i}", "gpu", self.cpus_per_node, self.gpus_per_node, self.slurmd_base_port + self.cpu_nodes + i - 1)
            for i in range(1, self.gpu_nodes + 1)
        ]
        return cpu + gpu

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @property
    def partitions(self) -> dict[str, list[str]]:
        parts: dict[str, list[str]] = {}
        for node in self.nodes:
            parts.setdefault(node.partition, []).append(node.name)
        return parts

    # --- paths -------------------------------------------------------------------------------------
    @property
    def etc_dir(self) -> Path:
        return self.state_dir / "etc"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.state_dir / "log"

    @property
    def slurm_conf(self) -> Path:
        return self.etc_dir / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.etc_dir / "gres.conf"

    @property
    def slurmdbd_conf(self) -> Path:
        # slurmdbd looks for slurmdbd.conf next to $SLURM_CONF.
        return self.etc_dir / "slurmdbd.conf"

    @property
    def task_prolog(self) -> Path:
        return self.etc_dir / "task_prolog.sh"

    @property
    def ctld_state_dir(self) -> Path:
        return self.state_dir / "ctld"

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def tmpfs_dir(self) -> Path:
        return self.state_dir / "tmp"

    @property
    def gpu_dev_dir(self) -> Path:
        return self.state_dir / "dev"

    @property
    def munge_dir(self) -> Path:
        return self.state_dir / "munge"

    @property
    def munge_socket(self) -> Path:
        return self.munge_dir / "munge.socket"

    @property
    def munge_key(self) -> Path:
        return self.munge_dir / "munge.key"

    @property
    def db_dir(self) -> Path:
        return self.state_dir / "mariadb"

    @property
    def db_socket(self) -> Path:
        return self.run_dir / "mariadb.sock"

    @property
    def db_password_file(self) -> Path:
        return self.etc_dir / "db_password"

    @property
    def spec_file(self) -> Path:
        return self.state_dir / "spec.json"

    @property
    def accounting_db(self) -> str:
        return f"{self.cluster_name}_acct"

    def pid_file(self, daemon: str) -> Path:
        """PID file of `daemon` ("munged", "mariadbd", "slurmdbd", "slurmctld", or "slurmd-<node>")."""
        if daemon == "munged":
            # munged runs as user munge and writes its PID file itself: it lives in munge's directory.
            return self.munge_dir / "munged.pid"
        return self.run_dir / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.log_dir / f"{daemon}.log"

    def vader_dir(self, node: str) -> str:
        # Open MPI names its shared-memory segments after the real host name, which all fake nodes
        # share: one backing directory per fake node keeps them apart.
        return f"/dev/shm/{self.cluster_name}-{self.base_port}-{node}"

    # --- persistence: down()/status() need the spec that up() used ----------------------------------
    def to_json(self) -> str:
        data = asdict(self)
        data["state_dir"] = str(self.state_dir)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ClusterSpec":
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ClusterSpec keys {unknown}; valid keys: {sorted(known)}")
        return cls(**data)


def _hostlist(names: list[str]) -> str:
    """c1,c2,c3 -> c[1-3] (names here are always <letter><consecutive numbers from 1>)."""
    if not names:
        return ""
    prefix = names[0].rstrip("0123456789")
    return f"{prefix}[1-{len(names)}]" if len(names) > 1 else names[0]


def render_slurm_conf(spec: ClusterSpec) -> str:
    s = spec
    auth_info = f"socket={s.munge_socket},cred_expire=5"
    lines = [
        "# Written by vit_dt.localcluster: a multi-node Slurm cluster on 127.0.0.1. Do not edit;",
        "# `vit-dt cluster up` rewrites it.",
        f"ClusterName={s.cluster_name}",
        # "localhost" is accepted as the controller's own name whatever the real host name is.
        f"SlurmctldHost=localhost({LOOPBACK})",
        f"SlurmctldPort={s.slurmctld_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # cred_expire=5: a requeued job is held until its credential expires (default 120 s).
        f"AuthInfo={auth_info}",
        f"StateSaveLocation={s.ctld_state_dir}",
        f"SlurmdSpoolDir={s.spool_dir}/%n",
        f"SlurmctldPidFile={s.pid_file('slurmctld')}",
        f"SlurmdPidFile={s.run_dir}/slurmd-%n.pid",
        f"SlurmctldLogFile={s.log_file('slurmctld')}",
        f"SlurmdLogFile={s.log_dir}/slurmd-%n.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # Per-node TmpFS: without it the pmix plugin's directories of the fake nodes collide.
        f"TmpFS={s.tmpfs_dir}/%n",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        f"TaskProlog={s.task_prolog}",
        "MpiDefault=pmix",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        # Lets each fake node declare more CPUs/memory than the machine has (else: INVAL).
        "SlurmdParameters=config_overrides",
        "GresTypes=gpu",
        "SchedulerType=sched/backfill",
        # Default batch_sched_delay makes every job start ~3 s late.
        "SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1",
        "PriorityType=priority/basic",
        "JobRequeue=1",
        "KillWait=2",
        "OverTimeLimit=0",
        "UnkillableStepTimeout=30",
        "InactiveLimit=0",
        "MinJobAge=300",
        "ReturnToService=2",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "MessageTimeout=10",
        # The submitting shell's ulimits need not hold on a "compute node"; do not copy them.
        "PropagateResourceLimits=NONE",
        "JobAcctGatherType=jobacct_gather/linux",
        "JobAcctGatherFrequency=30",
        # Accounting through slurmdbd: submitit asks sacct to notice cancelled / timed-out jobs.
        "AccountingStorageType=accounting_storage/slurmdbd",
        f"AccountingStorageHost={LOOPBACK}",
        f"AccountingStoragePort={s.slurmdbd_port}",
        # With munge auth this names the munge socket used towards slurmdbd (AuthInfo's is not).
        f"AccountingStoragePass={s.munge_socket}",
        "MailProg=/bin/true",
        "JobCompType=jobcomp/none",
        "",
    ]
    for node in s.nodes:
        gres = f" Gres=gpu:{node.gpus}" if node.gpus else ""
        lines.append(
            f"NodeName={node.name} NodeHostname=localhost NodeAddr={LOOPBACK} Port={node.port} "
            f"CPUs={node.cpus} RealMemory={s.mem_mb_per_node}{gres} State=UNKNOWN"
        )
    lines.append("")
    for partition, names in s.partitions.items():
        default = "YES" if partition == "cpu" else "NO"
        lines.append(
            f"PartitionName={partition} Nodes={_hostlist(names)} Default={default} "
            f"MaxTime={s.max_time_min} DefaultTime={min(60, s.max_time_min)} State=UP"
        )
    return "\n".join(lines) + "\n"


def gpu_device_paths(spec: ClusterSpec) -> list[Path]:
    """The character devices standing in for GPUs (gres.conf rejects plain files)."""
    return [spec.gpu_dev_dir / f"nvidia{i}" for i in range(spec.gpus_per_node)]


def render_gres_conf(spec: ClusterSpec) -> str:
    lines = ["# Written by vit_dt.localcluster: fake GPUs backed by character devices.", "AutoDetect=off"]
    gpu_nodes = spec.partitions.get("gpu", [])
    if gpu_nodes:
        files = f"{spec.gpu_dev_dir}/nvidia[0-{spec.gpus_per_node - 1}]" if spec.gpus_per_node > 1 else str(
            gpu_device_paths(spec)[0]
        )
        lines.append(f"NodeName={_hostlist(gpu_nodes)} Name=gpu File={files}")
    return "\n".join(lines) + "\n"


def render_slurmdbd_conf(spec: ClusterSpec, db_password: str) -> str:
    s = spec
    return "\n".join(
        [
            "# Written by vit_dt.localcluster. Holds the local DB password: must stay mode 0600.",
            "AuthType=auth/munge",
            f"AuthInfo=socket={s.munge_socket}",
            "DbdHost=localhost",
            f"DbdAddr={LOOPBACK}",
            f"DbdPort={s.slurmdbd_port}",
            "SlurmUser=root",
            "DebugLevel=info",
            f"LogFile={s.log_file('slurmdbd')}",
            f"PidFile={s.pid_file('slurmdbd')}",
            "StorageType=accounting_storage/mysql",
            f"StorageHost={LOOPBACK}",
            f"StoragePort={s.db_port}",
            "StorageUser=slurm",
            f"StoragePass={db_password}",
            f"StorageLoc={s.accounting_db}",
            "",
        ]
    )


def render_task_prolog(spec: ClusterSpec) -> str:
    """A TaskProlog: lines it prints as `export K=V` land in each task's environment."""
    return "\n".join(
        [
            "#!/bin/sh",
            "# Written by vit_dt.localcluster. Runs before every task; `export` lines set task env vars.",
            "# TCP only between ranks: shared-memory segment names would collide across fake nodes.",
            'echo "export OMPI_MCA_btl=self,tcp"',
            f'dir="{spec.vader_dir("$SLURMD_NODENAME")}"',
            'mkdir -p "$dir"',
            'echo "export OMPI_MCA_btl_vader_backing_directory=$dir"',
            "",
        ]
    )


def render_hosts_block(spec: ClusterSpec) -> str:
    """The /etc/hosts lines that make the fake node names resolve (MASTER_ADDR from a node name)."""
    return f"{LOOPBACK} {' '.join(spec.node_names)}"
