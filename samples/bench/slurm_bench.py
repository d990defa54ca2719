"""The Slurm figures of `make bench` (README, Clusters): run by bench.py
against the cluster that sbatch reaches (samples/ci/slurm-start.sh makes a
one-node one); skipped with a line saying so when none answers."""

import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUILD_PY = os.path.join(ROOT, "guild.py")
PY = sys.executable
TRIVIAL = "i = 0\n"


def cluster_answers():
    if not shutil.which("sbatch"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], timeout=10,
                             stdout=subprocess.PIPE, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(s in (b"idle", b"mixed", b"allocated") for s in out.split())


def _guild(home, *args, cwd=None, module_dir=None):
    """Run guild ARGS: `python guild.py`, or with module_dir (a copy of
    guild.py and its cached bytecode) `python -m guild`."""
    env = dict(os.environ, GUILD_HOME=home)
    cmd = [PY, GUILD_PY]
    if module_dir:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        cmd, cwd = [PY, "-m", "guild"], module_dir
    start = time.perf_counter()
    p = subprocess.run(cmd + list(args), cwd=cwd, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       check=False)
    if p.returncode:
        raise RuntimeError("guild %s: %s" % (" ".join(args),
                                              p.stdout.decode()))
    return time.perf_counter() - start, p.stdout.decode()


def _store(tmp, name, n):
    """A project and a store with n trivial staged trials."""
    project = os.path.join(tmp, name)
    os.makedirs(project)
    with open(os.path.join(project, "trivial.py"), "w") as f:
        f.write(TRIVIAL)
    home = os.path.join(tmp, name + "-home")
    _guild(home, "run", "trivial.py", "i=[%s]" % ",".join(
        str(i) for i in range(n)), "--stage-trials", "-y", cwd=project)
    return project, home


def _submit(home, *args, module_dir=None):
    took, out = _guild(home, "slurm", "submit", "-y", *args,
                       module_dir=module_dir)
    return took, re.search(r"submission (\w+)", out).group(1)


def _wait(home, sub):
    with open(os.path.join(home, "slurm", sub, "submit.json")) as f:
        jobs = [a["job"] for a in json.load(f)["arrays"]]
    active = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")
    while True:
        out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "--me",
                              "-o", "%F %T"], stdout=subprocess.PIPE,
                             check=True).stdout.decode().split("\n")
        if not [x for x in out if x.split()[:1] and x.split()[0] in jobs
                and x.split()[1] in active]:
            return
        time.sleep(0.05)


def _trial_records(home):
    """[(started, stopped)] of the script runs, microseconds."""
    found = []
    for gdir in glob.glob(os.path.join(home, "runs", "*", ".guild")):
        with open(os.path.join(gdir, "run.json")) as f:
            if json.load(f)["op"]["kind"] != "script":
                continue
        with open(os.path.join(gdir, "proc.json")) as f:
            started = json.load(f)["started"]
        with open(os.path.join(gdir, "exit.json")) as f:
            found.append((started, json.load(f)["stopped"]))
    return found


def _starts(home, sub):
    """{run id: times a task started it}, from the task logs."""
    counts = {}
    for log in glob.glob(os.path.join(home, "slurm", sub, "*.out")):
        with open(log) as f:
            for run_id in re.findall(r"Starting staged run (\w+)", f.read()):
                counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def _trials_only(records):
    """Seconds per trial from the first start to the last end."""
    return (max(e for _, e in records) - min(s for s, _ in records)) \
        / 1e6 / len(records)


def run(tmp, row, repeats):
    if not cluster_answers():
        row("Slurm figures", "skipped: no cluster answers", "", True)
        return
    tmp = os.path.join(tmp, "slurm")
    module_dir = os.path.join(tmp, "module")
    os.makedirs(module_dir)
    shutil.copy(GUILD_PY, module_dir)
    _guild(tmp, "--version", module_dir=module_dir)  # its bytecode
    once, total, submits, first_starts = 0, 0, ([], []), []
    for i in range(repeats):
        _project, home = _store(tmp, "once-%d" % i, 20)
        took, sub = _submit(home, "--workers", "4",
                            module_dir=module_dir if i % 2 else None)
        submits[i % 2].append(took)
        _wait(home, sub)
        starts = _starts(home, sub)
        records = _trial_records(home)
        total += 20
        once += sum(1 for n in starts.values() if n == 1) if len(
            records) == 20 else 0
        with open(os.path.join(home, "slurm", sub, "submit.json")) as f:
            sbatch_at = json.load(f)["arrays"][0]["submitted"]
        first_starts.append((min(s for s, _ in records) - sbatch_at) / 1e6)
    row("Slurm runs started exactly once", "%d of %d (%d arrays of 4)"
        % (once, total, repeats), "100%", once == total)
    submit, m_submit = map(statistics.median, submits)
    row("Slurm submit, 20 runs", "%.3fs (-m guild %.3fs)" % (
        submit, m_submit), "<= 0.3s", min(submit, m_submit) <= 0.3)
    first = statistics.median(first_starts)
    row("Slurm sbatch to first trial start", "%.2fs" % first, "<= 1s",
        first <= 1)
    local, worker = [], []
    for i in range(repeats):  # interleaved, so noise hits both alike
        project, home = _store(tmp, "local-%d" % i, 50)
        _guild(home, "run", "queue", "run-once=yes", "-y", cwd=project)
        local.append(_trials_only(_trial_records(home)))
        _project, home = _store(tmp, "worker-%d" % i, 50)
        _took, sub = _submit(home, "--workers", "1")
        _wait(home, sub)
        worker.append(_trials_only(_trial_records(home)))
    local, worker = statistics.median(local), statistics.median(worker)
    row("Slurm per trial, worker vs local", "%.4fs vs %.4fs = %.2fx"
        % (worker, local, worker / local), "<= 1.25x", worker / local <= 1.25)
    _project, home = _store(tmp, "status", 1000)
    _took, sub = _submit(home, "--workers", "4", "--sbatch-arg=--hold")
    try:
        _guild(home, "slurm", "status")  # the listing cache, as users have it
        status = statistics.median(_guild(home, "slurm", "status")[0]
                                   for _ in range(repeats))
        m_status = statistics.median(_guild(
            home, "slurm", "status", module_dir=module_dir)[0]
            for _ in range(repeats))
    finally:
        _guild(home, "slurm", "cancel", "-y")
    row("Slurm status, 1,000 runs", "%.3fs (-m guild %.3fs)" % (
        status, m_status), "<= 0.5s", min(status, m_status) <= 0.5)
