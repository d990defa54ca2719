"""Print, as JSON, what a script can observe of the process it runs in:
the sample behind the README's claim that a forked start and a fresh
interpreter look the same to a script (paths in the run directory are
given from RUN_DIR). Not shown, as they differ (see the README): the
standard modules already imported, exit handlers that site (a .pth
file) registered, the command line `ps` shows, and the hash seed."""

import faulthandler
import gc
import json
import os
import signal
import sys
import threading
import warnings

RUN_DIR = os.environ.get("RUN_DIR", os.getcwd())


def rel(p):
    return p.replace(RUN_DIR, "RUN_DIR") if isinstance(p, str) else p


def fds():
    found = {}
    for fd in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:  # the directory listing's own fd
            continue
        found[fd] = rel(target.partition(":[")[0])  # pipe:[inode]
    return found


stdlib = getattr(sys, "stdlib_module_names", ())
seen = {
    "argv": sys.argv, "orig_argv": getattr(sys, "orig_argv", None),
    "path": [rel(p) for p in sys.path], "file": rel(__file__),
    "name": __name__, "cwd": rel(os.getcwd()),
    "main": sorted(k for k in globals() if k.startswith("__")),
    "loader": type(__loader__).__name__,
    "modules": sorted(m for m in sys.modules if stdlib
                      and m.partition(".")[0] not in stdlib),
    "fds": fds(),
    "own group": os.getpgid(0) == os.getpid(),
    "own session": os.getsid(0) == os.getpid(),
    "handlers": {s.name: str(signal.getsignal(s)) for s in signal.Signals
                 if s not in (signal.SIGKILL, signal.SIGSTOP)},
    "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])),
    "env": sorted(k for k in os.environ if k.startswith(("GUILD", "RUN_"))
                  and k != "GUILD_NO_FORK"),
    "threads": [t.name for t in threading.enumerate()],
    "flags": repr(sys.flags), "executable": sys.executable,
    "stdio": [(f.encoding, f.errors, f.line_buffering, f.isatty())
              for f in (sys.stdin, sys.stdout, sys.stderr)],
    "stdio are sys.__std*__": [sys.stdin is sys.__stdin__,
                               sys.stdout is sys.__stdout__,
                               sys.stderr is sys.__stderr__],
    "hooks": [sys.excepthook is sys.__excepthook__,
              sys.displayhook is sys.__displayhook__],
    "warnings": [repr(f) for f in warnings.filters],
    "recursion limit": sys.getrecursionlimit(),
    "gc": [gc.isenabled(), gc.get_threshold()],
    "umask": os.umask(0o22),
    "faulthandler": faulthandler.is_enabled(),
    "trace": [sys.gettrace(), sys.getprofile()],
}
print(json.dumps(seen, indent=1, sort_keys=True))
