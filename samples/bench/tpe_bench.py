"""The tpe figures of `make bench` (README, Model-based search: tpe).

Through the real command line, each batch in a store of its own: tpe
against random search (same seeds, same budgets) on Branin, Hartmann-6,
Styblinski-Tang 5-D, Rosenbrock 5-D and a mixed space (the sample
samples/projects/tpe/train.py: a log-scaled learning rate, a choice, a whole
number and a float); tpe with 4 trials in flight (--stage-trials, trials
run by queues) against tpe run sequentially; then, in this process, the
cost of a proposal at 100 trials in 6 dimensions and what the optimizer's
code adds to importing guild.py. Regret is the best loss found minus the
function's minimum; figures are medians over the seeds.

Run by bench.py, or alone:

    python3 samples/bench/tpe_bench.py                    # seeds 0-19
    python3 samples/bench/tpe_bench.py --seeds 5 --in-flight-seeds 3
    python3 samples/bench/tpe_bench.py --first-seed 20    # seeds 20-39
"""

import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUILD_PY = os.path.join(ROOT, "guild.py")
MIXED_PY = os.path.join(ROOT, "samples", "projects", "tpe", "train.py")
PY = sys.executable

sys.path.insert(0, ROOT)
import guild  # noqa: E402  (the file under test, from this checkout)

BRANIN = """\
import math
x1 = 0.0
x2 = 0.0
b, c, t = 5.1 / (4 * math.pi ** 2), 5 / math.pi, 1 / (8 * math.pi)
loss = (x2 - b * x1 ** 2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10
print("loss: %.10g" % loss)
"""

HARTMANN6 = """\
import math
x1 = 0.0
x2 = 0.0
x3 = 0.0
x4 = 0.0
x5 = 0.0
x6 = 0.0
A = [[10, 3, 17, 3.5, 1.7, 8], [0.05, 10, 17, 0.1, 8, 14],
     [3, 3.5, 1.7, 10, 17, 8], [17, 8, 0.05, 10, 0.1, 14]]
P = [[1312, 1696, 5569, 124, 8283, 5886], [2329, 4135, 8307, 3736, 1004, 9991],
     [2348, 1451, 3522, 2883, 3047, 6650], [4047, 8828, 8732, 5743, 1091, 381]]
C = [1.0, 1.2, 3.0, 3.2]
x = [x1, x2, x3, x4, x5, x6]
loss = -sum(C[i] * math.exp(-sum(A[i][j] * (x[j] - P[i][j] * 1e-4) ** 2
                                 for j in range(6))) for i in range(4))
print("loss: %.10g" % loss)
"""

STYBLINSKI5 = """\
x1 = 0.0
x2 = 0.0
x3 = 0.0
x4 = 0.0
x5 = 0.0
loss = 0.5 * sum(v ** 4 - 16 * v ** 2 + 5 * v for v in [x1, x2, x3, x4, x5])
print("loss: %.10g" % loss)
"""

ROSENBROCK5 = """\
x1 = 0.0
x2 = 0.0
x3 = 0.0
x4 = 0.0
x5 = 0.0
x = [x1, x2, x3, x4, x5]
loss = sum(100 * (x[i + 1] - x[i] ** 2) ** 2 + (1 - x[i]) ** 2
           for i in range(4))
print("loss: %.10g" % loss)
"""


def _floats(names, low, high):
    return ["%s=[%r:%r]" % (n, float(low), float(high)) for n in names]


def _xs(n):
    return ["x%d" % i for i in range(1, n + 1)]


# name: (script, flags, minimum, trials for the random-search figure,
#        target ratio of random's median regret to tpe's)
FUNCTIONS = [
    ("Branin", BRANIN, ["x1=[-5.0:10.0]", "x2=[0.0:15.0]"], 0.397887358,
     50, 4.0),
    ("Hartmann-6", HARTMANN6, _floats(_xs(6), 0, 1), -3.322368011, 50, 4.0),
    ("Styblinski-Tang 5-D", STYBLINSKI5, _floats(_xs(5), -5, 5),
     -39.16616570 * 5, 100, 1.3),
    ("Rosenbrock 5-D", ROSENBROCK5, _floats(_xs(5), -5, 10), 0.0, 50, 4.0),
    ("mixed space", None, ["lr=loguniform[1e-5:1e-1]",
                           "opt=[sgd,adam,rmsprop]", "layers=[1:6]",
                           "dropout=[0.0:0.5]"], 0.0, 50, 2.5),
]
SEQUENTIAL_TRIALS = 100  # for the in-flight comparison
IN_FLIGHT = 4


def _env(home):
    return dict(os.environ, GUILD_HOME=home)


def _guild(home, project, *args):
    p = subprocess.run([PY, GUILD_PY] + list(args), cwd=project,
                       env=_env(home), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, check=False)
    if p.returncode:
        raise RuntimeError("guild %s: %s" % (" ".join(args),
                                              p.stdout.decode()[-2000:]))


def _losses(home):
    """The batch's trial losses in trial order (None: no loss)."""
    runs = [x for x in guild.run_summaries(os.path.join(home, "runs"))
            if x["batch"]]
    runs.sort(key=lambda x: (x["created"], x["id"]))
    return [x["scalars"].get("loss") if x["status"] == "completed"
            else None for x in runs]


def _regret(losses, n, minimum):
    done = [v for v in losses[:n] if v is not None]
    return (min(done) - minimum) if done else float("inf")


def _project(tmp, name, script):
    project = os.path.join(tmp, re.sub(r"[^a-z0-9]+", "-", name.lower()))
    os.makedirs(project, exist_ok=True)
    target = os.path.join(project, "f.py")
    if script is None:
        shutil.copy(MIXED_PY, target)
    else:
        with open(target, "w") as f:
            f.write(script)
    return project


def _batch(tmp, project, flags, optimizer, trials, seed, in_flight=False):
    home = tempfile.mkdtemp(prefix="home-", dir=tmp)
    args = ["run", "f.py"] + flags + ["-o", optimizer, "-m", str(trials),
                                      "--random-seed", str(seed), "-y", "-q"]
    if not in_flight:
        _guild(home, project, *args)
        return home
    batch = subprocess.Popen(
        [PY, GUILD_PY] + args + ["--stage-trials", "-Fo",
                                 "in-flight=%d" % IN_FLIGHT],
        cwd=project, env=_env(home), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    # The workers: queues that start what is staged, then stop.
    while batch.poll() is None:
        subprocess.run([PY, GUILD_PY, "run", "queue", "run-once=yes", "-y",
                        "-q"], cwd=project, env=_env(home),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False)
        time.sleep(0.01)
    if batch.returncode:
        raise RuntimeError("tpe batch with trials in flight failed")
    return home


def quality(tmp, row, seeds, in_flight_seeds, first=0):
    """tpe against random search, and 4 in flight against sequential, on
    seeds first, first + 1, ..."""
    print("   (seeds %d-%d)" % (first, first + seeds - 1), flush=True)
    for name, script, flags, minimum, budget, target in FUNCTIONS:
        project = _project(tmp, name, script)
        started = time.monotonic()
        tpe, rand, seq = [], [], []
        for seed in range(first, first + seeds):
            tpe_losses = _losses(_batch(tmp, project, flags, "tpe",
                                        SEQUENTIAL_TRIALS, seed))
            rand_losses = _losses(_batch(tmp, project, flags, "random",
                                         budget, seed))
            tpe.append(_regret(tpe_losses, budget, minimum))
            rand.append(_regret(rand_losses, budget, minimum))
            seq.append(_regret(tpe_losses, SEQUENTIAL_TRIALS, minimum))
        ratio = statistics.median(rand) / statistics.median(tpe)
        row("%s, %d trials" % (name, budget),
            "random/tpe %.3g / %.3g = %.2fx" % (
                statistics.median(rand), statistics.median(tpe), ratio),
            ">= %sx" % target, ratio >= target)
        par = []
        for seed in range(first, first + in_flight_seeds):
            par.append(_regret(_losses(_batch(
                tmp, project, flags, "tpe", SEQUENTIAL_TRIALS, seed,
                in_flight=True)), SEQUENTIAL_TRIALS, minimum))
        if par:
            worse = statistics.median(par) / statistics.median(
                seq[:in_flight_seeds])
            row("   %d in flight vs sequential, %d" % (
                IN_FLIGHT, SEQUENTIAL_TRIALS),
                "%.3g / %.3g = %.2fx (seeds %d-%d)" % (
                    statistics.median(par), statistics.median(
                        seq[:in_flight_seeds]), worse, first,
                    first + in_flight_seeds - 1),
                "<= 2x", worse <= 2)
        print("   (%s: %.0fs)" % (name, time.monotonic() - started),
              flush=True)


def proposal_cost(row, repeats=30):
    """A proposal at 100 trials in 6 dimensions (Hartmann-6's space), in
    CPU time: the machine may be shared."""
    space = guild._tpe_space({n: guild._distribution("uniform", 0.0, 1.0)
                              for n in _xs(6)})
    rnd = random.Random(0)
    history = [([rnd.random() for _ in space], rnd.random())
               for _ in range(SEQUENTIAL_TRIALS)]
    times = []
    for seed in range(repeats):
        start = time.process_time()
        guild._tpe_propose(space, history, random.Random(seed))
        times.append(time.process_time() - start)
    cost = statistics.median(times) * 1000
    row("tpe proposal, 100 trials, 6-D", "%.1f ms CPU" % cost, "< 10 ms",
        cost < 10)


def import_cost(tmp, row, repeats=21):
    """What the optimizer's section adds to importing guild.py: the
    module with and without it, bytecode cached, the import's CPU time
    measured in the importing process, interleaved."""
    with open(GUILD_PY) as f:
        text = f.read()
    header = re.search(r"\n## \d+\. Optimizers", text)
    start = text.rindex("\n# ----", 0, header.start())
    end = text.index("\n# ----", re.compile(r"\n## \d+\. ").search(
        text, header.end()).start())
    dirs = []
    for label, source in (("with", text), ("without",
                                           text[:start] + text[end:])):
        d = os.path.join(tmp, "import-" + label)
        os.makedirs(d)
        with open(os.path.join(d, "guild.py"), "w") as f:
            f.write(source)
        env = dict(os.environ)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        subprocess.run([PY, "-c", "import guild"], cwd=d, env=env,
                       check=True)  # caches the bytecode
        dirs.append((d, env))
    timed = ("import time; t = time.process_time(); import guild; "
             "print(time.process_time() - t)")
    times = [[], []]
    for _ in range(repeats):
        for i, (d, env) in enumerate(dirs):
            out = subprocess.run([PY, "-c", timed], cwd=d, env=env,
                                 stdout=subprocess.PIPE, check=True).stdout
            times[i].append(float(out))
    with_, without = [statistics.median(t) * 1000 for t in times]
    row("import guild, with tpe vs without", "%.1f ms vs %.1f ms CPU"
        % (with_, without), "no more", with_ - without < 1.0)


def run(tmp, row, seeds=20, in_flight_seeds=20, first=0):
    proposal_cost(row)
    import_cost(tmp, row)
    quality(tmp, row, seeds, in_flight_seeds, first)


def main(argv):
    seeds = int(argv[argv.index("--seeds") + 1]) if "--seeds" in argv \
        else 20
    in_flight_seeds = int(argv[argv.index("--in-flight-seeds") + 1]) \
        if "--in-flight-seeds" in argv else seeds
    first = int(argv[argv.index("--first-seed") + 1]) \
        if "--first-seed" in argv else 0
    tmp = tempfile.mkdtemp(prefix="guild-tpe-bench-")

    def row(workload, value, target, ok):
        print("%-34s %-42s %-10s %s" % (workload, value, target,
                                        "yes" if ok else "NO"), flush=True)
    try:
        run(tmp, row, seeds, in_flight_seeds, first)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
