"""make bench: guild.py's workloads against their targets.

Builds its own temporary run stores and prints, for each workload, guild.py's
median time and the ratio its target names, measured in this one run (the
machine is shared and noisy: compare ratios, not absolute times).

    python3 samples/bench/bench.py            # all workloads
    python3 samples/bench/bench.py --quick    # fewer repeats, W3 at 200 not 1,000,
                                              # V3 at 180 polls not 1,800
    python3 samples/bench/bench.py --only W1,W3,W5   # some workloads (WORKLOADS)
"""

import gc
import glob
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUILD_PY = os.path.join(ROOT, "guild.py")
SAY_PY = os.path.join(ROOT, "samples", "projects", "batch", "say.py")
PY = sys.executable

sys.path.insert(0, ROOT)
import guild  # noqa: E402  (the file under test, from this checkout)
import slurm_bench  # noqa: E402  (beside this file)

TRIVIAL = "i = 0\n"
SLEEPER = "import time\ni = 0\ntime.sleep(0.2)\n"


def _run(cmd, cwd=None, home=None, bytecode=False):
    env = dict(os.environ)
    if home:
        env["GUILD_HOME"] = home
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _median(values):
    return statistics.median(values)


def _project(tmp, name, files):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    for fname, text in files.items():
        with open(os.path.join(d, fname), "w") as f:
            f.write(text)
    return d


def w1(tmp, repeats):
    """run say.py msg=hi -y against bare python say.py --msg hi: as
    `python guild.py` (compiled each time) and as `python -m guild` from
    the directory holding a copy of guild.py (cached bytecode)."""
    with open(SAY_PY) as f:
        project = _project(tmp, "w1", {"say.py": f.read()})
    shutil.copy(GUILD_PY, project)  # for -m guild; its .pyc lands here
    home = os.path.join(tmp, "w1-home")
    _run([PY, GUILD_PY, "run", "say.py", "-y"], project, home)  # flags cache
    _run([PY, "-m", "guild", "--version"], project, bytecode=True)
    bare, tracked, module = [], [], []
    for _ in range(repeats):  # interleaved, so noise hits all alike
        bare.append(_run([PY, "say.py", "--msg", "hi"], project))
        tracked.append(_run([PY, GUILD_PY, "run", "say.py", "msg=hi", "-y"],
                            project, home))
        module.append(_run([PY, "-m", "guild", "run", "say.py", "msg=hi",
                            "-y"], project, home, bytecode=True))
    return _median(bare), _median(tracked), _median(module)


def _make_runs(runs_dir, n):
    """n finished runs written directly, as guild.py would leave them."""
    os.makedirs(runs_dir, exist_ok=True)
    op = {"kind": "script", "name": "say.py", "script": "say.py"}
    for i in range(n):
        run_dir = os.path.join(runs_dir, guild.mkid())
        flags = {"msg": "m%d" % i, "loud": False}
        run = guild._init_run(run_dir, {"op": op, "flags": flags,
                                        "label": guild.format_flags(flags)},
                              staged=True)
        guild._write_json(run.guild_path("proc.json"), {
            "pid": 1, "start": "x", "started": guild._timestamp()})
        guild._write_json(run.guild_path("exit.json"), {
            "exit_status": 0, "stopped": guild._timestamp(),
            "status": "completed"})
        os.remove(run.guild_path("STAGED"))


def w2(tmp, n, repeats):
    """runs (first 20) and runs -a over n runs; cold, then warm medians.

    The runs are left alone for 2 s first: the listing cache does not
    trust a run changed in the last 2 s (the racy-mtime guard) and reads
    it again, so listing a store just written measures that instead.
    """
    home = os.path.join(tmp, "w2-%d" % n)
    saved = os.environ.get("GUILD_HOME")
    os.environ["GUILD_HOME"] = home
    try:
        _make_runs(os.path.join(home, "runs"), n)
    finally:
        if saved is None:
            os.environ.pop("GUILD_HOME")
        else:
            os.environ["GUILD_HOME"] = saved
    shutil.rmtree(os.path.join(home, "cache"), ignore_errors=True)
    time.sleep(2.1)
    cold = _run([PY, GUILD_PY, "runs"], tmp, home)
    first = _median([_run([PY, GUILD_PY, "runs"], tmp, home)
                     for _ in range(repeats)])
    every = _median([_run([PY, GUILD_PY, "runs", "-a"], tmp, home)
                     for _ in range(repeats)])
    module_dir = os.path.join(tmp, "w2-m-%d" % n)  # python -m guild here
    os.makedirs(module_dir)
    shutil.copy(GUILD_PY, module_dir)
    _run([PY, "-m", "guild", "--version"], module_dir, bytecode=True)
    m_first = _median([_run([PY, "-m", "guild", "runs"], module_dir, home,
                            bytecode=True) for _ in range(repeats)])
    m_every = _median([_run([PY, "-m", "guild", "runs", "-a"], module_dir,
                            home, bytecode=True) for _ in range(repeats)])
    return cold, first, every, m_first, m_every


def _stage_trials(project, home, n):
    vals = ",".join(str(i) for i in range(n))
    return _run([PY, GUILD_PY, "run", "trivial.py", "i=[%s]" % vals,
                 "--stage-trials", "-y"], project, home)


def w3(tmp, n):
    """One queue draining n trivial staged trials: seconds per trial."""
    project = _project(tmp, "w3-%d" % n, {"trivial.py": TRIVIAL})
    home = os.path.join(tmp, "w3-%d-home" % n)
    _stage_trials(project, home, n)
    total = _run([PY, GUILD_PY, "run", "queue", "run-once=yes", "-y"],
                 project, home)
    return total / n


def w4(tmp, n, queues, script=TRIVIAL, module=False):
    """Wall time for `queues` queues to drain n staged trials of script,
    and the time from the first trial's start to the last one's end (the
    queues' own start-up left out), from the run records. With module,
    the queues run as `python -m guild` (cached bytecode)."""
    project = _project(tmp, "w4-%d" % queues, {"trivial.py": script})
    home = os.path.join(tmp, "w4-%d-home" % queues)
    _stage_trials(project, home, n)
    env = dict(os.environ, GUILD_HOME=home)
    guild_cmd = [PY, GUILD_PY]
    if module:
        shutil.copy(GUILD_PY, project)
        _run([PY, "-m", "guild", "--version"], project, bytecode=True)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        guild_cmd = [PY, "-m", "guild"]
    start = time.perf_counter()
    procs = [subprocess.Popen(
        guild_cmd + ["run", "queue", "run-once=yes", "ignore-running=yes",
                     "-y"], cwd=project, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL) for _ in range(queues)]
    for p in procs:
        p.wait()
    wall = time.perf_counter() - start
    starts, ends = [], []
    for gdir in glob.glob(os.path.join(home, "runs", "*", ".guild")):
        with open(os.path.join(gdir, "run.json")) as f:
            if json.load(f)["op"]["kind"] != "script":
                continue
        with open(os.path.join(gdir, "proc.json")) as f:
            starts.append(json.load(f)["started"])
        with open(os.path.join(gdir, "exit.json")) as f:
            ends.append(json.load(f)["stopped"])
    return wall, (max(ends) - min(starts)) / 1e6


def w5(tmp, n, queues, module=False):
    """W4 with trials that wait rather than compute (each sleeps 0.2 s,
    as a trial waiting on a GPU): what several queues gain when the CPU
    is not what the trials share."""
    return w4(tmp, n, queues, script=SLEEPER, module=module)


def stage50(tmp, repeats):
    times = []
    for i in range(repeats):
        project = _project(tmp, "s50-%d" % i, {"trivial.py": TRIVIAL})
        home = os.path.join(tmp, "s50-%d-home" % i)
        _run([PY, GUILD_PY, "run", "trivial.py", "--stage", "-y"], project,
             home)  # flags cache, as a user's second run would have it
        times.append(_stage_trials(project, home, 50))
    return _median(times)


def _scalar_events(first_step, n):
    """TFRecords of n simple_value scalar events, two tags alternating."""
    records = []
    for step in range(first_step, first_step + n):
        value = (guild._proto_field(1, b"loss" if step % 2 else b"acc")
                 + guild._proto_field(2, (5, struct.pack("<f", 1.0 / (step + 1)))))
        records.append(guild._tfrecord(
            guild._proto_field(1, time.time()) + guild._proto_field(2, step)
            + guild._proto_field(5, guild._proto_field(1, value))))
    return b"".join(records)


def e1(tmp, repeats):
    """A run's event file of 100,000 scalar events: its first read, and
    a later read after the script wrote 1,000 more (only those are
    read)."""
    run_dir = os.path.join(tmp, "e1")
    os.makedirs(os.path.join(run_dir, ".guild"))
    events = os.path.join(run_dir, "events.out.tfevents.1.host")
    with open(events, "wb") as f:
        f.write(_scalar_events(0, 100000))
    first, later = [], []
    for i in range(repeats):
        index = os.path.join(run_dir, ".guild", guild.EVENTS_INDEX)
        if os.path.exists(index):
            os.remove(index)
        start = time.perf_counter()
        guild._event_stats(run_dir)
        first.append(time.perf_counter() - start)
        with open(events, "ab") as f:
            f.write(_scalar_events(100000 + i * 1000, 1000))
        start = time.perf_counter()
        stats = guild._event_stats(run_dir)[0]
        later.append(time.perf_counter() - start)
        assert stats["loss"]["count"] == 50000 + (i + 1) * 500
    return _median(first), _median(later)


def _serve(home):
    """A view server of home's runs in a thread; (url, server)."""
    server = guild._view_server(guild._View(os.path.join(home, "runs")),
                                "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return "http://127.0.0.1:%d" % server.server_address[1], server


def _get(url):
    start = time.perf_counter()
    with urllib.request.urlopen(url) as r:
        r.read()
    return time.perf_counter() - start


def v1(home, repeats):
    """The runs page (its first 100 rows) and /api/runs over the store
    that W2 made: the first request, then medians."""
    url, server = _serve(home)
    try:
        first = _get(url + "/")
        page = _median([_get(url + "/") for _ in range(repeats)])
        api = _median([_get(url + "/api/runs") for _ in range(repeats)])
    finally:
        server.shutdown()
        server.server_close()
    return first, page, api


def _write_curves(runs_dir, runs, points):
    """runs runs of curve.py, each with points loss values."""
    ids = []
    for i in range(runs):
        run = guild._init_run(os.path.join(runs_dir, guild.mkid()), {
            "op": {"kind": "script", "name": "curve.py"},
            "flags": {"lr": 0.01 * (i + 1)}, "label": ""}, staged=True)
        with open(run.guild_path("scalars"), "w") as f:
            f.writelines(json.dumps(["loss", 1.0 / (step + 1) + i * 0.01,
                                     step, step]) + "\n"
                         for step in range(points))
        ids.append(run.id)
    return ids


def v2(tmp, repeats):
    """/compare of 10 runs x 10,000 points (a plot of their curves, the
    table and the flag scatter), each time from a new server, so that
    the scalars are read and parsed every time (a page polled again
    parses only a file that changed)."""
    home = os.path.join(tmp, "v2-home")
    ids = _write_curves(os.path.join(home, "runs"), 10, 10000)
    time.sleep(2.1)  # past the racy-mtime window (see w2), then listed
    guild.run_summaries(os.path.join(home, "runs"))
    target = "/compare?runs=" + ",".join(ids)
    times = []
    for _ in range(repeats):
        url, server = _serve(home)
        try:
            times.append(_get(url + target))
        finally:
            server.shutdown()
            server.server_close()
    return _median(times)


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def v3(tmp, polls):
    """A run page and the runs page polled `polls` times (an hour is
    1,800 polls at the page's 2 s) while the run prints a step's output
    and scalars before each poll: the server's memory (RSS) after a
    tenth of the polls, and at the end."""
    home = os.path.join(tmp, "v3-home")
    run_id = _write_curves(os.path.join(home, "runs"), 10, 100)[0]
    gdir = os.path.join(home, "runs", run_id, ".guild")
    url, server = _serve(home)
    try:
        start = None
        for i in range(polls):
            with open(os.path.join(gdir, "scalars"), "a") as f:
                f.write(json.dumps(["loss", 1.0 / (i + 2), 100 + i, i])
                        + "\n")
            with open(os.path.join(gdir, "output"), "a") as f:
                f.write("step: %d\nloss: %f\n" % (100 + i, 1.0 / (i + 2)))
            _get(url + "/")
            _get(url + "/runs/" + run_id)
            _get(url + "/api/runs/%s/output?offset=-100" % run_id)
            if i == polls // 10:
                gc.collect()
                start = _rss()
        gc.collect()
        return start, _rss()
    finally:
        server.shutdown()
        server.server_close()


WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "V2", "V3", "stage50", "E1", "S")


def main(argv):
    quick = "--quick" in argv
    only = set(argv[argv.index("--only") + 1].split(",")) \
        if "--only" in argv else set(WORKLOADS)
    unknown = only - set(WORKLOADS)
    if unknown:
        sys.exit("unknown workloads %s (known: %s)" % (
            ", ".join(sorted(unknown)), ", ".join(WORKLOADS)))
    repeats = 3 if quick else 7
    big_w3 = 200 if quick else 1000
    tmp = tempfile.mkdtemp(prefix="guild-bench-")
    rows = []

    def row(workload, value, target, ok):
        rows.append((workload, value, target, "yes" if ok else "NO"))
        print("%-34s %-30s %-24s %s" % rows[-1], flush=True)

    print("guild.py %s bench, Python %s on %s (%d cores); medians"
          % (guild.__version__, sys.version.split()[0], sys.platform,
             os.cpu_count() or 0))
    print("%-34s %-30s %-24s %s" % ("workload", "guild.py", "target",
                                     "met"))
    try:
        startup = _median([_run([PY, "-c", "pass"]) for _ in range(repeats)])
        if "W1" in only:
            bare, tracked, module = w1(tmp, repeats * 2)
            row("W1 run vs bare python", "%.3fs vs %.3fs = %.2fx"
                % (tracked, bare, tracked / bare), "<= 1.5x",
                tracked / bare <= 1.5)
            row("W1 same, python -m guild", "%.3fs vs %.3fs = %.2fx"
                % (module, bare, module / bare), "<= 1.5x",
                module / bare <= 1.5)
        for n, t_first, t_all in [(1000, 0.1, 0.3), (10000, 0.2, 2.0)]:
            if "W2" not in only:
                break
            cold, first, every, m_first, m_every = w2(tmp, n, repeats)
            row("W2 runs / runs -a, %d runs" % n, "%.3fs / %.3fs"
                % (first, every), "<= %ss / <= %ss" % (t_first, t_all),
                first <= t_first and every <= t_all)
            row("   same, python -m guild", "%.3fs / %.3fs"
                % (m_first, m_every), "<= %ss / <= %ss" % (t_first, t_all),
                m_first <= t_first and m_every <= t_all)
            row("   (cold cache / python startup)", "%.3fs / %.3fs"
                % (cold, startup), "", True)
            if n == 10000:
                first, page, api = v1(os.path.join(tmp, "w2-%d" % n),
                                      repeats)
                row("V1 view runs page, %d runs" % n, "%.3fs (first %.3fs)"
                    % (page, first), "<= 0.3s", page <= 0.3)
                row("   /api/runs, %d runs" % n, "%.3fs" % api, "<= 0.3s",
                    api <= 0.3)
        if "W3" in only:
            small = w3(tmp, 50)
            bare_trivial = _median([_run([PY, "-c", TRIVIAL])
                                    for _ in range(repeats)])
            row("W3 queue, per trial @50", "%.3fs (bare python %.3fs)"
                % (small, bare_trivial), "overhead <= 0.06s",
                small - bare_trivial <= 0.06)
            large = w3(tmp, big_w3)
            row("W3 queue, per trial @%d" % big_w3, "%.3fs = %.2fx of @50"
                % (large, large / small), "<= 1.25x of @50",
                large / small <= 1.25)
        for name, target, module in [("W4", 1.8, False), ("W5", 3.6, False),
                                     ("W5", 3.6, True)]:
            if name not in only:
                continue
            workload = w4 if name == "W4" else w5
            times = [[workload(os.path.join(tmp, "%s-%d-%s" % (
                name, i, module)), 100, queues, module=module)
                for queues in (1, 4)]
                for i in range(max(repeats // (2 if name == "W4" else 3),
                                   1))]
            one, one_trials = [_median(r[0][k] for r in times)
                               for k in (0, 1)]
            four, four_trials = [_median(r[1][k] for r in times)
                                 for k in (0, 1)]
            row("   same, python -m guild" if module else
                "%s 4 queues vs 1, 100 %s" % (
                    name, "trials" if name == "W4" else "0.2 s sleeps"),
                "%.2fs vs %.2fs = %.2fx" % (four, one, one / four),
                ">= %sx" % target, one / four >= target)
            row("   same, trials only", "%.2fs vs %.2fs = %.2fx"
                % (four_trials, one_trials, one_trials / four_trials),
                ">= %sx" % target, one_trials / four_trials >= target)
        if "V2" in only:
            plot = v2(tmp, repeats)
            row("V2 view plot, 10 runs x 10,000", "%.3fs" % plot, "<= 0.3s",
                plot <= 0.3)
        if "V3" in only:
            polls = 180 if quick else 1800
            before, after = v3(tmp, polls)
            row("V3 view memory, %d polls" % polls, "%.1f MB -> %.1f MB" % (
                before / 1e6, after / 1e6), "growth <= 2 MB",
                after - before <= 2e6)
        if "stage50" in only:
            staged = stage50(tmp, repeats)
            row("stage 50 trials", "%.3fs" % staged, "<= 0.3s",
                staged <= 0.3)
        if "E1" in only:
            first, later = e1(tmp, repeats)
            row("E1 100,000 TensorBoard scalars", "%.3fs, +1,000: %.3fs"
                % (first, later), "~0.5s, +1,000 <= 0.02s",
                first <= 0.6 and later <= 0.02)
        if "S" in only:
            slurm_bench.run(tmp, row, repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
