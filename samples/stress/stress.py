"""make stress: the kill storm of test_guild.py's KillStormTest, longer.

    python3 samples/stress/stress.py [SECONDS]

Runs the storm in both start modes (scripts forked, then in fresh
interpreters, GUILD_NO_FORK=1) for SECONDS each (default 60, or
GUILD_STRESS_SECONDS), with GUILD_STRESS_TRIALS trials (default 400) and
GUILD_STRESS_QUEUES queues (default 3). The seed is printed first;
GUILD_STRESS_SEED=N repeats a storm (the same random choices; when
each kill lands depends on the machine).
"""

import os
import random
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def main():
    seconds = (sys.argv[1] if len(sys.argv) > 1 else
               os.environ.get("GUILD_STRESS_SECONDS") or "60")
    seed = os.environ.get("GUILD_STRESS_SEED") or str(
        random.SystemRandom().randrange(10 ** 6))
    print("stress: seed %s (GUILD_STRESS_SEED=%s make stress repeats it), "
          "%s s per mode" % (seed, seed, seconds), flush=True)
    failed = False
    for mode, extra in (("forked scripts", {}),
                        ("fresh interpreters", {"GUILD_NO_FORK": "1"})):
        print("stress: %s" % mode, flush=True)
        env = dict(os.environ, GUILD_STRESS_SECONDS=seconds,
                   GUILD_STRESS_SEED=seed, **extra)
        env.setdefault("GUILD_STRESS_TRIALS", "400")
        code = subprocess.call(
            [sys.executable, "-m", "unittest", "-v",
             "test_guild.KillStormTest"], cwd=ROOT, env=env)
        failed = failed or code != 0
    print("stress: %s (seed %s)" % ("FAILED" if failed else "ok", seed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
