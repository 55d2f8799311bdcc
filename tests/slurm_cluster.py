"""Start and stop a real single-node SLURM cluster for tests (Debian's slurm-wlm + munge).

What was found to work on a Debian CI machine (see docs/slurm.md): the config must sit at
/etc/slurm/slurm.conf, because the executor plugin's job step strips SLURM_* variables
(SLURM_CONF included) before its inner srun; munged runs as the munge user on its default
socket; slurmctld and slurmd run as root with state, spool, pid and log files under a temp
dir; no accounting (Snakemake is told to poll squeue, and MinJobAge keeps finished jobs
visible to it). Daemons are stopped by the PIDs in their pid files, never by name, and the
config file is removed again, because a slurm.conf that names a controller nobody runs
makes every later `scontrol` (which the plugin calls whenever Snakemake starts) retry for
about 10 s.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SLURM_CONF = Path("/etc/slurm/slurm.conf")
# First line of every slurm.conf written here: only such a file is ever replaced or removed.
MARKER = "# written by rlhf-audit tests/slurm_cluster.py; removed when the test cluster stops"
MUNGE_SOCKET_DIR = Path("/run/munge")
MUNGE_PIDFILE = MUNGE_SOCKET_DIR / "munged.pid"
REQUIRED_BINARIES = (
    "slurmctld",
    "slurmd",
    "sbatch",
    "squeue",
    "sinfo",
    "scontrol",
    "srun",
    "munged",
    "munge",
)
INSTALL_HINT = (
    "install Debian's SLURM and munge as .ci/run does: "
    "`apt-get update && apt-get install -y slurm-wlm munge` (as root)"
)
# Set in the environment of snakemake calls that do not use SLURM: with slurm-client
# installed and no controller, the executor plugin's `scontrol show config` at import
# otherwise waits for a DNS SRV lookup (about 10 s) on machines without a resolver;
# an empty config file makes every SLURM client command fail at once instead.
NO_CLUSTER_ENV = {"SLURM_CONF": os.devnull}


class SlurmClusterError(RuntimeError):
    """The test cluster could not be started (the message names the log to read)."""


def missing_binaries() -> list[str]:
    """The SLURM/munge programs this module needs that are not on PATH (or in /usr/sbin)."""
    return [b for b in REQUIRED_BINARIES if _which(b) is None]


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def cluster_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for commands that talk to the test cluster: SLURM_CONF removed (the
    config is at its default path) and /usr/sbin on PATH for the daemons."""
    env = dict(os.environ if base is None else base)
    env.pop("SLURM_CONF", None)
    if "/usr/sbin" not in env.get("PATH", "").split(":"):
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin:/sbin"
    return env


def _run(cmd: list[str], timeout: float = 30, check: bool = True) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cluster_env())
    if check and res.returncode != 0:
        raise SlurmClusterError(
            f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
        )
    return res.stdout


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0, ...) would address our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _stop_pid(pid: int, expect: str, timeout: float = 15) -> None:
    """SIGTERM the process PID (only if its command line names EXPECT), SIGKILL after TIMEOUT."""
    if not _pid_alive(pid) or expect not in _cmdline(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid) or expect not in _cmdline(pid):
            return
        time.sleep(0.1)
    log.warning("%s (pid %d) ignored SIGTERM for %.0f s; sending SIGKILL", expect, pid, timeout)
    os.kill(pid, signal.SIGKILL)


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        if cred.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10)
        return dec.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def node_memory_mb() -> int:
    """RealMemory as `slurmd -C` reports it (MB), so the node registers without draining."""
    out = _run([_which("slurmd") or "slurmd", "-C"])
    m = re.search(r"RealMemory=(\d+)", out)
    if not m:
        raise SlurmClusterError(f"`slurmd -C` printed no RealMemory: {out!r}")
    return int(m.group(1))


def render_slurm_conf(
    root: Path, node: str, cpus: int, memory_mb: int, munged_pid: int | None = None
) -> str:
    """slurm.conf of a one-node cluster whose state, spool, pid and log files live under ROOT
    (MUNGED_PID: the munged this helper started, recorded for a later leftover cleanup)."""
    return "\n".join(
        [
            MARKER,
            f"# munged-started-pid={munged_pid or 0}",
            "ClusterName=rlhfaudit",
            "SlurmctldHost=localhost",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid",
            f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log",
            f"SlurmdLogFile={root}/slurmd.log",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "MpiDefault=none",
            # Finished jobs stay visible to squeue for an hour: Snakemake polls squeue (there is
            # no accounting) and the plugin wants MinJobAge >= 3x its first status-check delay.
            "MinJobAge=3600",
            f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


@dataclass
class SlurmCluster:
    """A running single-node cluster; `stop()` ends exactly the daemons it started."""

    root: Path
    """Directory holding the cluster's state, spool, pid and log files."""
    node: str
    """Node name (`hostname -s`)."""
    started_munged: bool = False
    """True if this cluster started munged (and so stops it); False if one was running."""
    pids: dict[str, int] = field(default_factory=dict)
    """PIDs of the daemons started here, read from their pid files."""

    def squeue(self, fmt: str = "%i|%j|%k|%T") -> list[list[str]]:
        """Every job slurmctld still holds (finished ones included: MinJobAge), split by '|'."""
        out = _run(["squeue", "--states=all", "--noheader", f"--format={fmt}"])
        return [line.split("|") for line in out.splitlines() if line.strip()]

    def log_tail(self, n: int = 40) -> str:
        """The last N lines of the controller's and node daemon's logs (for error messages)."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            p = self.root / name
            lines = p.read_text(errors="replace").splitlines()[-n:] if p.exists() else []
            parts.append(f"--- {p} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop the daemons started here by their PIDs and
        remove the slurm.conf written here."""
        if _pid_alive(_read_pid(self.root / "slurmctld.pid") or 0):
            ids = _run(["squeue", "--noheader", "--format=%i"], check=False, timeout=15).split()
            if ids:
                _run(["scancel", *ids], check=False, timeout=15)
        for name in ("slurmd", "slurmctld"):
            pid = _read_pid(self.root / f"{name}.pid") or self.pids.get(name)
            if pid:
                _stop_pid(pid, name)
        if self.started_munged:
            pid = _read_pid(MUNGE_PIDFILE) or self.pids.get("munged")
            if pid:
                _stop_pid(pid, "munged")
        _remove_our_conf()


def _stop_leftovers() -> None:
    """Stop daemons a killed test session left behind: only those named in a slurm.conf
    this module wrote (marker line), found by the pid files that config names."""
    try:
        text = SLURM_CONF.read_text()
    except FileNotFoundError:
        return
    if not text.startswith(MARKER):
        return
    for key, name in (("SlurmdPidFile", "slurmd"), ("SlurmctldPidFile", "slurmctld")):
        m = re.search(rf"^{key}=(.+)$", text, re.M)
        pid = _read_pid(Path(m.group(1))) if m else None
        if pid:
            log.warning("stopping %s (pid %d) left by an earlier test session", name, pid)
            _stop_pid(pid, name)
    m = re.search(r"^# munged-started-pid=(\d+)$", text, re.M)
    if m and int(m.group(1)) and _read_pid(MUNGE_PIDFILE) == int(m.group(1)):
        log.warning("stopping munged (pid %s) left by an earlier test session", m.group(1))
        _stop_pid(int(m.group(1)), "munged")
    _remove_our_conf()


def _remove_our_conf() -> None:
    try:
        if SLURM_CONF.read_text().startswith(MARKER):
            SLURM_CONF.unlink()
    except FileNotFoundError:
        pass


def _wait_idle(cluster: SlurmCluster, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        res = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"],
            capture_output=True,
            text=True,
            timeout=15,
            env=cluster_env(),
        )
        state = res.stdout.strip()
        if res.returncode == 0 and state == "idle":
            return
        time.sleep(0.5)
    raise SlurmClusterError(
        f"node {cluster.node} not idle after {timeout:.0f} s "
        f"(sinfo says {state!r})\n{cluster.log_tail()}"
    )


def start_cluster(root: Path, timeout: float = 60) -> SlurmCluster:
    """Start munged (unless one answers already), slurmctld and slurmd; return once `sinfo`
    reports the node idle. ROOT (created) holds state and logs. Raises SlurmClusterError
    with the daemons' log tails if it does not come up; stops what it started first."""
    if os.geteuid() != 0:
        raise SlurmClusterError(
            "the test cluster runs its daemons as root; run the tests "
            "as root (as CI does) or set RLHF_AUDIT_SKIP_SLURM=1"
        )
    missing = missing_binaries()
    if missing:
        raise SlurmClusterError(f"not installed: {', '.join(missing)}; {INSTALL_HINT}")
    if SLURM_CONF.exists() and not SLURM_CONF.read_text().startswith(MARKER):
        raise SlurmClusterError(
            f"{SLURM_CONF} exists and was not written by this test "
            "helper; refusing to replace a real cluster's config"
        )
    _stop_leftovers()
    root = Path(root)
    for sub in ("state", "spool"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(root=root, node=socket.gethostname().split(".")[0])
    try:
        if not _munge_works():
            MUNGE_SOCKET_DIR.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_SOCKET_DIR, "munge", "munge")
            MUNGE_SOCKET_DIR.chmod(0o755)
            _run(["runuser", "-u", "munge", "--", _which("munged") or "munged"])
            cluster.started_munged = True
            cluster.pids["munged"] = _read_pid(MUNGE_PIDFILE) or 0
            if not _munge_works():
                raise SlurmClusterError(
                    "munged started but `munge -n | unmunge` fails; see /var/log/munge/munged.log"
                )
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(
            render_slurm_conf(
                root,
                cluster.node,
                len(os.sched_getaffinity(0)),  # = nproc
                node_memory_mb(),
                cluster.pids.get("munged"),
            )
        )
        # -c: start from empty state, so no job of an earlier test session is resumed.
        _run([_which("slurmctld") or "slurmctld", "-c"])
        _run([_which("slurmd") or "slurmd"])
        for name in ("slurmctld", "slurmd"):
            cluster.pids[name] = _read_pid(root / f"{name}.pid") or 0
        _wait_idle(cluster, timeout)
    except BaseException:
        cluster.stop()
        raise
    log.info("SLURM test cluster up: node %s, state in %s", cluster.node, root)
    return cluster
