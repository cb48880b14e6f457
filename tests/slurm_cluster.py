"""A single-node SLURM cluster on 127.0.0.1 from Debian's packages (slurm-wlm, munge), for tests and benchmarks.

`LocalSlurm(folder).start()` writes a munge key, a slurm.conf and the state/spool folders under `folder`, starts
munged, slurmctld and slurmd in the foreground (so their pids are ours) and waits until the node is idle;
`stop()` stops exactly those pids. Every SLURM command finds the cluster through `SLURM_CONF`, which `env()` gives.

Nothing outlives the process that started the cluster: each daemon gets a parent-death signal (prctl
PR_SET_PDEATHSIG), so a test run killed by `timeout` or Ctrl-C takes its daemons with it; and `start()` first stops
what an earlier run left behind anyway (a job step of a killed run, a daemon of a run killed with SIGKILL before its
signal was set): every munged/slurmctld/slurmd/slurmstepd whose SLURM_CONF is one of ours (`ClusterName=dermajepa`)
and whose owner (the pid in `owner.pid` beside the conf) is no longer alive.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
PACKAGES = ("slurm-wlm", "munge")


def missing() -> list[str]:
    "The daemons and commands this machine lacks (empty when a cluster can start)."
    return [d for d in DAEMONS if not (shutil.which(d) or Path(f"/usr/sbin/{d}").exists())]


def install() -> str:
    "Install the Debian packages when missing (root only); '' on success, else why not."
    if not missing(): return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"): return "slurm-wlm/munge missing and apt-get unavailable (not root)"
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ok = subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    if not ok:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        ok = subprocess.run(cmd, capture_output=True, env=env).returncode == 0
    return "" if ok and not missing() else f"apt-get install {' '.join(PACKAGES)} failed; missing: {', '.join(missing())}"


def _die_with_parent():
    "In the child before exec: SIGTERM when the process that started it dies (Linux prctl PR_SET_PDEATHSIG = 1)."
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def alive(pid: int) -> bool:
    "Whether `pid` runs (a zombie, dead but not yet reaped, does not)."
    try: return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError: return False


def stale_daemons() -> list[int]:
    "Pids of SLURM/munge processes of a dermajepa cluster whose owner process is gone (left by a killed run)."
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit(): continue
        try:
            if (d / "comm").read_text().strip() not in {"munged", "slurmctld", "slurmd", "slurmstepd"}: continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in kv)
        except OSError: continue
        conf = Path(env.get("SLURM_CONF", ""))
        try: ours = conf.name == "slurm.conf" and conf.read_text().startswith("ClusterName=dermajepa")
        except OSError: ours = conf.name == "slurm.conf" and "dermajepa-slurm" in str(conf)      # its folder is gone
        if not ours: continue
        try: owner = int((conf.parent / "owner.pid").read_text())
        except (OSError, ValueError): owner = -1
        if owner < 0 or not alive(owner): out.append(int(d.name))
    return out


def stop_stale(wait: float = 10) -> list[int]:
    "Stop what `stale_daemons` finds (SIGTERM, then SIGKILL); return their pids."
    pids = stale_daemons()
    for pid in pids:
        try: os.kill(pid, signal.SIGTERM)
        except ProcessLookupError: pass
    t0 = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - t0 < wait: time.sleep(0.2)
    for pid in pids:
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    return pids


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


CONF = """\
ClusterName=dermajepa
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={folder}/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=3600
KillWait={kill_wait}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmdParameters=config_overrides
NodeName=node1 NodeHostname={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes=node1 Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    "One node, `cpus` CPUs, in `folder`; start() / stop(), or a context manager."
    def __init__(self, folder, cpus: int = 2, mem_mb: int = 8000, kill_wait: int = 10):
        self.folder, self.cpus, self.mem_mb, self.kill_wait = Path(folder).resolve(), cpus, mem_mb, kill_wait
        self.procs: list[subprocess.Popen] = []

    @property
    def conf(self) -> Path: return self.folder / "slurm.conf"
    def env(self) -> dict: return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _spawn(self, name, *args):
        log = open(self.folder / f"{name}.out", "ab")
        self.procs.append(subprocess.Popen([shutil.which(name) or f"/usr/sbin/{name}", *args], stdout=log, stderr=log,
                                           env=self.env(), start_new_session=True, preexec_fn=_die_with_parent))

    def start(self, timeout: float = 30) -> "LocalSlurm":
        stop_stale()
        f = self.folder
        for d in ("munge", "state", "spool"): (f / d).mkdir(parents=True, exist_ok=True)
        (f / "munge").chmod(0o700)
        key = f / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024)); key.chmod(0o400)
        (f / "owner.pid").write_text(str(os.getpid()))
        self.conf.write_text(CONF.format(host=socket.gethostname(), ctld_port=_free_port(), d_port=_free_port(), folder=f,
                                         cpus=self.cpus, mem_mb=self.mem_mb, kill_wait=self.kill_wait))
        self._spawn("munged", "-F", "--force", f"--socket={f}/munge/munge.socket", f"--key-file={key}",
                    f"--pid-file={f}/munge/munged.pid", f"--log-file={f}/munge/munged.log", f"--seed-file={f}/munge/seed")
        self._wait(lambda: (f / "munge" / "munge.socket").exists(), timeout, "munged's socket")
        self._spawn("slurmctld", "-D", "-i", "-f", str(self.conf))
        self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", "node1")
        self._wait(self.idle, timeout, "node1 to be idle")
        return self

    def idle(self) -> bool:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=self.env())
        return r.returncode == 0 and r.stdout.strip() == "idle"

    def _wait(self, ok, timeout, what):
        t0 = time.monotonic()
        while not ok():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() - t0 > timeout:
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(self.folder.glob("*.out")) + sorted(self.folder.glob("*.log")))
                self.stop()
                raise RuntimeError(f"local SLURM: waiting for {what} failed ({'exited: ' + ', '.join(dead) if dead else 'timeout'})\n{logs}")
            time.sleep(0.2)

    def stop(self):
        "Cancel this cluster's jobs (none may outlive it), then stop the daemons this object started (by pid), slurmd first."
        if self.procs and all(p.poll() is None for p in self.procs):
            subprocess.run(["scancel", "--quiet", "--user", str(os.getuid())], env=self.env(), capture_output=True)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 20 and subprocess.run(["squeue", "-h"], env=self.env(), capture_output=True,
                                                                  text=True).stdout.strip():
                time.sleep(0.5)
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try: p.wait(15)
                except subprocess.TimeoutExpired: p.kill(); p.wait()
        self.procs.clear()

    def __enter__(self): return self.start()
    def __exit__(self, *exc): self.stop()
