#!/usr/bin/env python3
"""guild.py: track experiments in one file, with nothing to install.

    python guild.py run train.py lr=0.01 -y

guild.py runs a Python script as a tracked run in a directory of its own,
recording its flags, output, exit status and a snapshot of its source. A list
as a flag value makes a batch of trial runs; runs can be staged and started
later, one by one or from queues that share the work.

Public names (see __all__): the command line `main`; for notebooks and
scripts `run_op`, `runs` and `compare`; the run model `Run`, `OpRef`,
`run_status`, `list_runs`, `run_summaries`, `select_runs`, `RunFilter`;
flags and batches `decode_flag_val`, `encode_flag_val`, `format_flags`,
`batch_trials`, `init_trial_run`; scalars `parse_scalar_line`,
`read_scalars`, `scalar_stats`; `Lock`; `GuildError` and its subclasses;
and the compatibility namespaces `guild.batch_util`, `guild.op_util`,
`guild.lock` and `guild.run`. Everything else is internal.

Copyright (c) 2026 the guild.py authors. MIT licence (see the end of this
file): copy this file freely, keep this notice.
"""

# Table of contents
#
#   1. Imports, constants and platform choices
#   2. Output and logging
#   3. Errors
#   4. Small utilities: ids, time, JSON files, processes, host beats
#   5. Locks
#   6. Flags: decoding, encoding, inference
#   7. TensorBoard event files
#   8. Runs: the run directory, its status and its scalars
#   9. The run store: indexes, the listing cache, filters, the trash
#  10. Creating runs: operations, flags, the source snapshot
#  11. The script's process
#  12. Starting and stopping runs
#  13. Batches and trials
#  14. Optimizers: model-based search (tpe)
#  15. The queue
#  16. Slurm: staged runs on a cluster
#  17. Results: compare
#  18. The web view
#  19. Python API
#  20. Command line
#  21. Compatibility namespaces
#  22. Script entry
#
# How it fits together
#
# From the command line to a script (section numbers in brackets):
#
#   main(argv) -> _parser() -> COMMANDS["run"].func = _cmd_run          [20]
#     |- run_attrs(): the op, its flags (inferred [6, 11]), a batch?    [19]
#     |- _create_run() -> _init_run(): run dir, snapshot, run.json last [10]
#     |     `- --stage: STAGED and an index entry; nothing starts
#     `- _start_run(run)                                                [12]
#          |- script: _run_script()
#          |     |- _start_script_process(): a fork, or a fresh
#          |     |     interpreter loading this file; both enter
#          |     |     _script_process_main(), which records itself as
#          |     |     the run's process, runs the script as __main__
#          |     |     and records its own exit                        [11]
#          |     `- _supervise(): relays output, records scalars, passes
#          |           Ctrl-C, SIGTERM, SIGHUP and USR1 to the script's group
#          |- batch: _run_batch() or _run_tpe_batch()               [13, 14]
#          |     `- each trial: init_trial_run() -> _start_run(trial)
#          `- queue: _run_queue()                                      [15]
#                `- until done: _claim_next_staged() -> _start_run(run)
#
#   guild slurm submit -> _slurm_submit(): sbatch arrays whose tasks each
#   exec a queue over the same store                                   [16]
#
# A run's state is never stored: run_status() derives it from the files
# in its .guild directory [8]; each arrow names the function that makes
# the file behind the next state.
#
#   A new run (_init_run) is staged (--stage, staged trials), or pending
#   and started at once by _start_run; a process records itself as the
#   run's (running) as it starts: a batch or queue's own, a script's
#   (_record_script_start) just before the script runs. Then:
#
#              _claim_staged()            _record_start(),
#     staged -----------------> pending -----------------> running
#      ^  ^  ^                     |  |   _mark_started()    |   |
#      |  |  `---------------------'  |                      |   |
#      |  |   _restage_dead_claims(): its claimer died       |   |
#      |  `-- _restage_unstarted(): stopped before the start |   |
#      `----------- _restage_in_place(): preempted (USR1) ---'   |
#                                                                |
#                     _record_script_exit(), or _start_run()'s end
#                                                                v
#                                        completed | error | terminated
#
#   A running run whose process (and, on another machine, whose host's
#   lease) died without an exit record reads as error; a run whose files
#   are damaged lists as error or "?", the reason in `runs info`.

__version__ = "0.1.0"

__all__ = [
    "FlagError",
    "GuildError",
    "Lock",
    "LockTimeout",
    "OpError",
    "OpRef",
    "Run",
    "RunError",
    "RunFilter",
    "UsageError",
    "batch_trials",
    "compare",
    "compare_rows",
    "create_run",
    "decode_flag_val",
    "encode_flag_val",
    "format_flags",
    "init_trial_run",
    "is_distribution",
    "list_runs",
    "main",
    "mkid",
    "parse_scalar_line",
    "parse_time_range",
    "read_scalars",
    "render_label",
    "run_attrs",
    "run_op",
    "run_status",
    "run_summaries",
    "runs",
    "scalar_stats",
    "select_runs",
    "set_run_pending",
]

# ---------------------------------------------------------------------------
## 1. Imports, constants and platform choices
# ---------------------------------------------------------------------------

import sys

# The modules the interpreter had imported before this file: a script's
# process forgets others the script's own files shadow (section 11).
_INTERPRETER_MODULES = frozenset(sys.modules)
# How the interpreter's stdout handles what its encoding cannot write,
# before the command line changes it: a forked script's stdout gets it.
_INTERPRETER_STDOUT_ERRORS = getattr(sys.stdout, "errors", None)
# Run as a program, this file's directory is first on sys.path, where a
# project's own json.py beside a copied guild.py would stand in for the
# standard library's. guild.py needs nothing from there: take it off.
_OWN_PATH_ENTRY = (sys.path.pop(0) if __name__ == "__main__" and sys.path
                   else None)

import signal

# Ctrl-C while this file loads as a program ends it as SIGINT's default
# action does, quietly, not with a traceback of whatever line it was
# loading; the entry (section 22) gives SIGINT back to Python's handler.
_QUIET_LOAD = __name__ == "__main__" and (
    signal.getsignal(signal.SIGINT) is signal.default_int_handler)
if _QUIET_LOAD:
    signal.signal(signal.SIGINT, signal.SIG_DFL)

# logging and subprocess are imported where they are used: together they
# cost a plain run a fifth of an interpreter's start-up, and it needs neither.
import argparse
import atexit
import builtins
import codecs
import csv
import difflib
import errno
import gc
import io
import itertools
import json
import math
import operator
import os
import random
import re
import shutil
import struct
import threading
import time
import types
import zlib

_THIS_FILE = os.path.abspath(__file__)
_THIS_MODULE = sys.modules[__name__]

IS_WINDOWS = os.name == "nt"
# Owners of claims and runs name their machine: a shared store is read by
# queues on several hosts, and a pid means something only on its own.
HOST = (os.environ.get("COMPUTERNAME", "") if IS_WINDOWS
        else os.uname().nodename)

if IS_WINDOWS:  # pragma: no cover - exercised on Windows only
    import ctypes
    import msvcrt

    def _try_lock_fd(fd):
        """Try once to lock the first byte of fd; True if locked."""
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock_fd(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _try_lock_fd(fd):
        """Try once to lock fd with a POSIX record lock; True if locked,
        False if another process holds it.

        Record locks (lockf), unlike flock, work on network filesystems.
        """
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise GuildError("cannot lock files in GUILD_HOME (%s): the "
                             "run store needs POSIX record locks"
                             % e.strerror)
        return True

    def _unlock_fd(fd):
        fcntl.lockf(fd, fcntl.LOCK_UN)


# On Linux a script run starts in a fork of the guild process, which saves
# a second interpreter start-up per run (the bulk of guild.py's overhead).
# Elsewhere (Windows cannot fork; macOS frameworks are not fork-safe), in a
# process with other threads, or with GUILD_NO_FORK=1 in the environment,
# it starts in a fresh interpreter. The fork needs CPython's atexit
# internals to run the script's exit handlers and not guild's.
FORK_SCRIPTS = (sys.platform.startswith("linux")
                and hasattr(atexit, "_clear")
                and hasattr(atexit, "_run_exitfuncs")
                and not os.environ.get("GUILD_NO_FORK"))

PROG = "guild"
RUN_ID_LEN = 32
SHORT_ID_LEN = 8
DEFAULT_LIST_LIMIT = 20
# The source snapshot's defaults (Guild AI's); a project's guild.ini
# [sourcecode] section, or Guild AI's variables for one command, change them.
MAX_SOURCE_FILES = 100
MAX_SOURCE_FILE_SIZE = 1024 * 1024
SOURCE_CONFIG = "guild.ini"
SOURCE_LIMIT_ENV = {"max-count": "MAX_DEFAULT_SOURCECODE_COUNT",
                    "max-size": "MAX_DEFAULT_SOURCECODE_FILE_SIZE"}
MAX_LEFT_OUT_RECORDED = 1000  # files left out named in run.json
# Why the snapshot left a file out, in the order they are told.
SOURCE_LEFT_OUT_REASONS = ("size", "binary", "count")
FLAGS_PROBE_TIMEOUT = 60
DEFAULT_MAX_TRIALS = 20
OPTIMIZERS = ("+", "random", "tpe")
# Guild AI's scikit-optimize optimizers, which tpe stands in for.
SKOPT_OPTIMIZERS = ("gp", "forest", "gbrt", "skopt:gp", "skopt:forest",
                    "skopt:gbrt")
# Optimizer flags (-Fo NAME=VAL): the smallest value each takes.
OPT_FLAGS = {"tpe": {"random-starts": 0, "in-flight": 1}}
STOP_GRACE_SECONDS = 10
PREEMPT_GRACE_SECONDS = 105  # after a USR1 notice, before SIGTERM
DEFAULT_MAX_REQUEUES = 3  # interrupted attempts before a run stays ended
OUTPUT_CHUNK = 1 << 20  # bytes of a run's output relayed at a time
MAX_SCALAR_LINE = 4096  # longer output lines are not scalars
# Bounds on search spaces: values a sequence (range[...]) may expand to,
# trials a batch may run (-m samples larger grids, lazily), and the size
# of a number in a search space.
MAX_SEQUENCE_VALUES = 100000
MAX_TRIALS = 100000
MAX_SEARCH_NUMBER = 1e300
INDEX_VERIFY_SECONDS = 60

# Files in a run's `.guild` directory. Each says one thing about the run.
RUN_ATTRS = "run.json"  # what the run is: op, flags, label, created ...
STAGED_MARKER = "STAGED"  # present while the run waits to be started
PENDING_CLAIM = "PENDING"  # who is about to start it (pid + start time)
PROC_ATTRS = "proc.json"  # the process running it, and when it started
EXIT_ATTRS = "exit.json"  # how it ended
OUTPUT_FILE = "output"  # what it printed, stdout and stderr as one stream
STDERR_SPANS = "output.stderr"  # which bytes of output are its stderr
SCALARS_FILE = "scalars"  # `key: number` lines it printed, one JSON a line
EVENTS_INDEX = "tfevents.json"  # how far its event files were read (cache)
ATTEMPTS_DIR = "attempts"  # <n>.json: each interrupted attempt, re-staged

QUEUE_FLAGDEFS = {
    "gpus": {"type": "string", "default": None,
             "help": "GPU ids (CUDA_VISIBLE_DEVICES) for the runs it starts"},
    "ignore-running": {"type": "boolean", "default": False,
                       "help": "Start staged runs while other runs run"},
    "poll-interval": {"type": "int", "default": 10,
                      "help": "Seconds between polls for staged runs"},
    "run-once": {"type": "boolean", "default": False,
                 "help": "Start the staged runs there are, then stop"},
}

_FLAG_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_INT_RE = re.compile(r"^[-+]?\d+$")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?$")
_SOURCE_SKIP_DIRS = {"__pycache__", "node_modules", "venv", "env"}
# Import statements, found without parsing (the ast module costs a plain
# run more than the scan): `import a.b as c, d`, `from .a import (b, c)`,
# and import_module("a.b") / __import__("a") with a literal name.
_IMPORT_RE = re.compile(
    r"(?:^|;)[ \t]*(?:from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+"
    r"(\([^)]*\)|[^\n#;]*)|import[ \t]+([^\n#;]*))"
    r"""|\b(?:import_module|__import__)\(\s*["']([\w.]+)["']""", re.M)
_SIZE_RE = re.compile(r"^(\d+)\s*(?:([kmg])(?:i?b)?|b)?$", re.I)


class _ProcessState:
    """Everything guild.py keeps in memory between calls, in one place:
    nothing else at module level changes after import. A script's forked
    process calls reset() (see _reset_process_state), so that it starts
    with guild as a fresh import leaves it."""

    def __init__(self):
        self.reset()

    def reset(self):
        # 2. Output: run output files open in this process (a batch or a
        # queue keeps its own open: what the runs it starts print lands
        # there too), and -q/--quiet.
        self.output_files = []
        self.quiet = False
        # 2. Logging: a handler is set up; it prints for the command line.
        self.log_setup = False
        self.log_cli = False
        # 4. The last timestamp given (_timestamp: strictly increasing).
        self.last_timestamp = 0
        # 4. This process as an owner (host, pid, start), by pid, and its
        # last host beat by guild home (time.monotonic()).
        self.own_owner = {}
        self.last_beat = {}
        # 5. Record locks this process holds, by path, and their guard.
        self.lock_guard = threading.Lock()
        self.lock_states = {}
        # 9. The listing cache as last parsed, by path, with the stat that
        # says it is unchanged: a long-lived process (the view, a
        # notebook) lists again without parsing again.
        self.parsed_summaries = {}
        # 12. A preemption notice (_Notice): a USR1 handler is installed
        # (the command line's); time.monotonic() of the notice; its grace
        # (seconds); the script's process group being watched, and the
        # one the notice reached.
        self.notice_handled = False
        self.notice_at = None
        self.notice_grace = PREEMPT_GRACE_SECONDS
        self.notice_script_pid = None
        self.notice_delivered = None


_STATE = _ProcessState()

# ---------------------------------------------------------------------------
## 2. Output and logging
# ---------------------------------------------------------------------------

class _Logger:
    """Stands for logging.getLogger(name), looked up when first used.

    Importing logging costs a tenth of a plain run, which logs nothing;
    batches and queues import it when they first log.
    """

    def __init__(self, name):
        self.name = name

    def __getattr__(self, attr):
        return getattr(_logger(self.name), attr)


log = _Logger("guild")
queue_log = _Logger("guild.queue")
_LOG_HANDLER_NAME = "guild.py"


def _write_stdout(data):
    out = sys.stdout
    buf = getattr(out, "buffer", None)
    if buf is not None:
        out.flush()
        buf.write(data)
        buf.flush()
    else:
        out.write(data.decode("utf-8", "replace"))
        out.flush()


def _tee(data, show=True):
    """Write bytes to the open run output files and, if show, to stdout."""
    for f in _STATE.output_files:
        f.write(data)
        f.flush()
    if show and not _STATE.quiet:
        _write_stdout(data)


def _echo(text=""):
    """Print a line for the user, recording it in open run outputs."""
    _tee((text + "\n").encode("utf-8"), show=False)
    print(text, flush=True)


def _warn(text):
    """Warn the user on stderr, `guild: warning: TEXT` (not log.warning:
    importing logging costs a plain run more than the warning)."""
    sys.stderr.write("%s: warning: %s\n" % (PROG, text))
    sys.stderr.flush()


def _showing_progress():
    """True if progress lines are shown: on a terminal, unless quiet."""
    return getattr(sys.stderr, "isatty", lambda: False)() and \
        not _STATE.quiet


def _progress(text, started):
    """Show a progress line on a terminal (stderr); nothing otherwise."""
    stream = sys.stderr
    if not _showing_progress():
        return
    elapsed = int(time.monotonic() - started)
    line = "[guild] %s, %d:%02d:%02d elapsed" % (
        text, elapsed // 3600, elapsed // 60 % 60, elapsed % 60)
    if not os.environ.get("NO_COLOR"):
        line = "\x1b[2m%s\x1b[0m" % line  # dim
    stream.write(line + "\n")
    stream.flush()


def _set_stdout_errors(errors):
    """Set how sys.stdout writes what its encoding cannot (a lone
    surrogate in a flag value on disk must not stop a listing); return
    the previous setting, or None if this stdout cannot change."""
    old = getattr(sys.stdout, "errors", None)
    if errors is None or old is None or not hasattr(sys.stdout,
                                                    "reconfigure"):
        return None
    sys.stdout.reconfigure(errors=errors)
    return old


def _logger(name):
    """The logging logger name; the first call sets up guild's loggers."""
    import logging
    if not _STATE.log_setup:
        _STATE.log_setup = True
        logging.getLogger("guild").addHandler(logging.NullHandler())
    if _STATE.log_cli:
        _STATE.log_cli = False
        guild_log = logging.getLogger("guild")
        if not any(h.get_name() == _LOG_HANDLER_NAME
                   for h in guild_log.handlers):
            handler = logging.Handler()
            handler.set_name(_LOG_HANDLER_NAME)
            handler.emit = _show_log_record
            guild_log.addHandler(handler)
        guild_log.setLevel(logging.INFO)
    return logging.getLogger(name)


def _show_log_record(record):
    """Show a log record as `LEVEL: [guild] message` on stderr and in open
    run outputs; queue records read `LEVEL: [queue] <time> message`."""
    name = record.name.rsplit(".", 1)[-1]
    msg = record.getMessage()
    if name == "queue":
        stamp = time.strftime("%Y-%m-%d %H:%M:%S",
                              time.localtime(record.created))
        msg = "%s %s" % (stamp, msg)
    line = "%s: [%s] %s\n" % (record.levelname, name, msg)
    try:
        _tee(line.encode("utf-8"), show=False)
        sys.stderr.write(line)
        sys.stderr.flush()
    except (OSError, ValueError):  # pragma: no cover - logging never raises
        pass


def _log_to_terminal(on):
    """Show guild's log records on the terminal from the next one logged,
    or stop showing them: the command line's choice, never made at import.
    """
    _STATE.log_cli = on
    if not on and _STATE.log_setup:
        guild_log = _logger("guild")
        for h in list(guild_log.handlers):
            if h.get_name() == _LOG_HANDLER_NAME:
                guild_log.removeHandler(h)


# ---------------------------------------------------------------------------
## 3. Errors
# ---------------------------------------------------------------------------


class GuildError(Exception):
    """A problem the user can fix; printed as `guild: <message>`."""

    exit_code = 1


class UsageError(GuildError):
    """Bad command line words."""

    exit_code = 2


class FlagError(GuildError):
    """A bad flag name or value."""


class RunError(GuildError):
    """A run that does not exist, or is in the wrong state."""


class OpError(GuildError):
    """An operation that cannot be found or started."""


class LockTimeout(GuildError):
    """A lock that could not be acquired in time."""


class ViewError(GuildError):
    """The web view cannot serve, or a URL it cannot answer."""
class SlurmError(GuildError):
    """Slurm missing, or refusing what guild asked of it."""


class StoreNotVisible(SlurmError):
    """A Slurm task on a machine that cannot see the run store."""

    exit_code = 3


class _StopRequested(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM or Ctrl-C while runs go (a
    KeyboardInterrupt, so API callers see the usual Ctrl-C)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


def _raise_stop(signum, _frame):
    raise _StopRequested(signum)


# Besides Ctrl-C (SIGINT), the signals that stop a guild command: SIGTERM,
# and SIGHUP, which its terminal closing sends.
_STOP_SIGNALS = () if IS_WINDOWS else ("SIGTERM", "SIGHUP")

# Stop signals held back: while the script's process is started, a stop
# must neither land inside os.fork (where Python prints and drops an
# exception raised by a handler) nor between the start and the watch (a
# script's process nobody watches). The held signal is taken once the
# watcher's handler is in place; the script's process inherits the hold
# and lets go as the script starts (its handlers are the script's then).
_HELD_SIGNALS = () if IS_WINDOWS or not hasattr(
    signal, "pthread_sigmask") else tuple(
        getattr(signal, n) for n in ("SIGINT",) + _STOP_SIGNALS)


def _hold_stops(hold=True):
    """Block (hold) or unblock the stop signals in this thread."""
    if _HELD_SIGNALS:
        signal.pthread_sigmask(signal.SIG_BLOCK if hold
                               else signal.SIG_UNBLOCK, _HELD_SIGNALS)


# ---------------------------------------------------------------------------
## 4. Small utilities: ids, time, JSON files, processes, host beats
# ---------------------------------------------------------------------------


def mkid():
    """Return a new run id: 32 hex digits."""
    return os.urandom(16).hex()



def _timestamp():
    """Microseconds since the epoch, strictly increasing in this process."""
    now = time.time_ns() // 1000
    if now <= _STATE.last_timestamp:
        now = _STATE.last_timestamp + 1
    _STATE.last_timestamp = now
    return now


def _format_time(ts):
    if not ts:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts / 1e6))


def _read_json(path, default=None):
    """Read a JSON file; default if missing or unreadable as JSON."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return default


# The type of each field guild.py reads from its metadata files. A file
# damaged by a crash, a full disk or a hand edit may hold anything: a field
# of another type is read as missing, and the damage is reported.
_RECORD_FIELDS = {
    RUN_ATTRS: {"op": dict, "flags": dict, "label": str, "created": int,
                 "batch": str, "project": str, "sourcecode": list,
                 "proto": dict, "id": str},
    PROC_ATTRS: {"pid": int, "started": int, "host": str, "child": dict,
                  "command": list},
    EXIT_ATTRS: {"exit_status": int, "stopped": int, "status": str},
}


def _read_record(path):
    """(record, problem) of a metadata file: record is a dict (fields of
    the wrong type left out) or None; problem says what is wrong with the
    file (None if it is missing or sound)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None, None
    except IsADirectoryError:
        return None, "is a directory"
    except OSError as e:
        return None, "cannot be read (%s)" % e.strerror
    if not data.strip(b" \t\r\n"):
        return None, "is empty"
    if b"\0" in data:
        return None, "holds NUL bytes"
    try:
        record = json.loads(data.decode("utf-8"))
    except ValueError:
        return None, "is not valid JSON (cut short?)"
    if not isinstance(record, dict):
        return None, "holds %s, not an object" % _json_type(record)
    problems = []
    for name, want in _RECORD_FIELDS.get(os.path.basename(path),
                                         {}).items():
        val = record.get(name)
        if val is not None and (not isinstance(val, want) or (
                want is int and isinstance(val, bool))):
            problems.append("%s is %s, not %s" % (
                name, _json_type(val), _json_type(want())))
            del record[name]
    return record, "; ".join(problems) or None


def _json_type(val):
    """How JSON names the type of val: a number, text, a list ..."""
    if isinstance(val, bool):
        return "a boolean"
    if isinstance(val, (int, float)):
        return "a number"
    if isinstance(val, str):
        return "text"
    if isinstance(val, list):
        return "a list"
    if isinstance(val, dict):
        return "an object"
    return "null"


def _field(record, name, want, default=None):
    """record[name] if it is a want (a type), else default ({} for a
    dict): nested fields of a damaged file are read as missing too."""
    val = record.get(name) if isinstance(record, dict) else None
    if isinstance(val, want) and not (want is int and isinstance(val, bool)):
        return val
    return {} if default is None and want is dict else default


def _read_dict(path):
    """A metadata file's record (see _read_record), or {}."""
    return _read_record(path)[0] or {}


def _write_json(path, data):
    """Write JSON atomically: readers see the old file or the new one."""
    _write_text(path, json.dumps(data))  # C; json.dump is pure Python


def _write_text(path, text):
    """Write a text file atomically."""
    tmp = "%s.%s.tmp" % (path, os.urandom(4).hex())
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        _replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _write_json_new(path, data):
    """Write JSON to path unless path exists; return True if written.

    The file is a hard link to a whole temp file: readers never see it
    half written, and of several writers exactly one wins, on NFS too,
    even where file locks hold only within one machine. On a filesystem
    without hard links it falls back to O_EXCL.
    """
    tmp = "%s.%s.tmp" % (path, os.urandom(4).hex())
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data))
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data))
        return True
    finally:
        _remove(tmp)


def _replace(src, dest):
    """os.replace. On Windows, a replace onto a file that a reader holds
    open fails for a moment (WinError 5, 32, 33): retry, boundedly."""
    for attempt in range(10):
        try:
            os.replace(src, dest)
            return
        except PermissionError as e:
            if not IS_WINDOWS or attempt == 9 or getattr(
                    e, "winerror", None) not in (5, 32, 33):
                raise
            time.sleep(min(0.005 * 2 ** attempt, 0.25))


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _guild_home():
    """The run store: GUILD_HOME, or ~/.guild."""
    home = os.environ.get("GUILD_HOME") or os.path.join(
        os.path.expanduser("~"), ".guild")
    return os.path.abspath(home)


def _runs_dir():
    return os.path.join(_guild_home(), "runs")


def _ensure_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = path
        while os.path.dirname(blocker) != blocker and (
                not os.path.lexists(blocker) or os.path.isdir(blocker)):
            blocker = os.path.dirname(blocker)
        raise GuildError("cannot make directory '%s': '%s' is a file; move "
                         "it away and try again" % (path, blocker))
    except OSError as e:
        raise GuildError("cannot create '%s': %s" % (path, e.strerror))


# Caches (GUILD_HOME/cache) are rebuilt from the run directories, so they
# heal: a file where the cache needs a directory, or a directory where it
# needs a file, is moved aside to GUILD_HOME/cache.damaged with a warning.

_WAY_ERRORS = (NotADirectoryError, IsADirectoryError, FileExistsError)


def _write_cache_json(path, data):
    """Write a cache file, making its directory, even if another process
    deletes the cache as we write (a deleted cache is rebuilt), or
    something is in the way (moved aside)."""
    for attempt in range(10):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            _write_json(path, data)
            return
        except FileNotFoundError:
            if attempt == 9:
                raise
        except _WAY_ERRORS:
            if attempt == 9 or not _make_cache_way(path):
                raise


def _ensure_cache_dir(path):
    """Make cache directory path, moving aside what is in its way."""
    try:
        os.makedirs(path, exist_ok=True)
    except _WAY_ERRORS:
        _make_cache_way(path, is_dir=True)
        os.makedirs(path, exist_ok=True)


def _make_cache_way(path, is_dir=False):
    """Move aside what stands where cache file path (with is_dir, cache
    directory path) or one of its directories should be; True if
    something was moved. Damage under cache/index also makes the index
    be rebuilt."""
    chain = []
    head = path
    while os.path.basename(head) != "cache" or head == _guild_home():
        chain.append(head)
        if len(chain) > 3:
            return False  # not a cache path: cache/index/KIND/NAME at most
        head = os.path.dirname(head)
    leaf = chain.pop(0)
    chain = [head] + chain[::-1]  # cache, its subdirectories, ... leaf's
    if is_dir:
        chain.append(leaf)
    home = os.path.dirname(head)
    moved = False
    for d in chain:
        if os.path.lexists(d) and not os.path.isdir(d):
            moved = _move_aside(d, home)
            break
    else:
        if not is_dir and os.path.isdir(leaf):
            moved = _move_aside(leaf, home)
    if moved and os.sep + "index" in path[len(head):]:
        _remove_path(os.path.join(head, "index", "version"), home)
    return moved


def _move_aside(path, home):
    """Move a damaged cache path to HOME/cache.damaged, warning; True."""
    rel = os.path.relpath(path, home).replace(os.sep, "_")
    dest = os.path.join(home, "cache.damaged", "%s.%d" % (rel, _timestamp()))
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.replace(path, dest)
    except FileNotFoundError:
        return True  # another process moved it
    except OSError as e:
        raise GuildError("'%s' is in the way of guild's cache and cannot "
                         "be moved (%s): remove it" % (path, e.strerror))
    log.warning("'%s' was not what guild's cache keeps there: moved it to "
                "'%s' (the cache is rebuilt)", path, dest)
    return True


def _remove_path(path, home):
    """Remove a cache file; a directory in its place is moved aside."""
    try:
        os.remove(path)
    except (FileNotFoundError, NotADirectoryError):
        pass  # a file in its directory's place is moved when listed
    except OSError:
        if not os.path.isdir(path):
            raise
        _move_aside(path, home)


if IS_WINDOWS:  # pragma: no cover - exercised on Windows only

    def _proc_token(pid):
        """Creation time of process pid, or None if it is not running."""
        k32 = ctypes.windll.kernel32
        handle = k32.OpenProcess(0x1000, False, pid)
        if not handle:
            return None
        try:
            code = ctypes.c_ulong()
            if not k32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return None
            if code.value != 259:  # STILL_ACTIVE
                return None
            times = [ctypes.c_ulonglong() for _ in range(4)]
            if not k32.GetProcessTimes(handle, *[ctypes.byref(t)
                                                 for t in times]):
                return ""
            return str(times[0].value)
        finally:
            k32.CloseHandle(handle)

elif os.path.isdir("/proc/self"):

    def _proc_token(pid):
        """Start time of process pid, or None if it is not running."""
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                stat = f.read()
        except OSError:
            return None
        fields = stat[stat.rfind(b")") + 2:].split()
        if fields[0] in (b"Z", b"X"):  # zombie or dead: not running
            return None
        return fields[19].decode()

else:  # pragma: no cover - macOS and other POSIX without /proc

    def _proc_token(pid):
        """Start time of process pid, or None if it is not running."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        import subprocess
        try:
            out = subprocess.run(
                ["ps", "-o", "lstart=,stat=", "-p", str(pid)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                check=False).stdout.decode().strip()
        except OSError:
            return ""
        if not out:
            return None
        if out.split()[-1].startswith("Z"):
            return None
        return " ".join(out.split()[:-1])



def _process_owner(pid=None):
    """Identify a process as host, pid and start time (pids get reused);
    None if process pid is not running."""
    if pid is None:
        pid = os.getpid()
        if pid not in _STATE.own_owner:
            _STATE.own_owner.clear()
            _STATE.own_owner[pid] = {"pid": pid, "start": _proc_token(pid),
                               "host": HOST}
        return dict(_STATE.own_owner[pid])
    start = _proc_token(pid)
    return None if start is None else {"pid": pid, "start": start,
                                       "host": HOST}


def _fork_possible():
    """True if a script's process may be a fork of this one: where
    FORK_SCRIPTS says so, and this process has no other threads (a
    notebook's), which a fork would leave in an unknown state."""
    return FORK_SCRIPTS and threading.active_count() == 1


def _owner_alive(owner, record=None):
    """True if the process that owner names is still the same and alive.

    A process on another host cannot be checked from here. It counts as
    alive, so no queue restages another machine's claim, unless its host
    has lapsed (see _host_lapsed) and record, the file that names it, is
    older than the lease too.
    """
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return False
    if owner.get("host", HOST) != HOST:
        return not (record and _host_lapsed(owner["host"])
                    and _older_than_lease(record))
    token = _proc_token(owner["pid"])
    if token is None:
        return False
    # "" is a start time this platform could not read: pid alone decides.
    return owner.get("start") == token or "" in (owner.get("start"), token)


def _slurm_task():
    """The Slurm batch task this process runs in, from the environment
    Slurm gives it: {"job", "task", "restart"}; None outside Slurm. job
    is the array's job id and task the array index (None for a job that
    is not an array); restart counts the times Slurm requeued it."""
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return None
    array_job = env.get("SLURM_ARRAY_JOB_ID")
    try:
        restart = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restart = 0
    return {"job": array_job or env["SLURM_JOB_ID"],
            "task": env.get("SLURM_ARRAY_TASK_ID") if array_job else None,
            "restart": restart}


def _slurm_task_name(task):
    """A task as Slurm's commands name it: JOB_TASK, or JOB."""
    if task.get("task") is None:
        return str(task["job"])
    return "%s_%s" % (task["job"], task["task"])


# Hosts sharing a store beat: every guild process that watches a run or
# waits in a queue touches GUILD_HOME/hosts/<host> at least every beat
# interval. A host silent for longer than the lease (GUILD_HOST_LEASE
# seconds, default 300) is taken for dead, and its claims and runs with it,
# once they are older than the lease as well. A claim is pending only for
# the moment before its run starts, and a started run is watched, so a live
# host's records never lapse, even if the host was idle before.

DEFAULT_HOST_LEASE = 300


def _host_lease():
    """The lease in seconds: GUILD_HOST_LEASE, or the default."""
    try:
        return max(float(os.environ.get("GUILD_HOST_LEASE") or
                         DEFAULT_HOST_LEASE), 1.0)
    except ValueError:
        raise GuildError("GUILD_HOST_LEASE must be a number of seconds")


def _host_path(host):
    return os.path.join(_guild_home(), "hosts",
                        re.sub(r"[^A-Za-z0-9._-]", "_", host) or "_")


def _beat():
    """Touch this host's heartbeat, if the last beat is a beat interval
    (a quarter of the lease, at most 30 s) old."""
    home = _guild_home()
    now = time.monotonic()
    last = _STATE.last_beat.get(home)
    interval = min(_host_lease() / 4, 30)
    if last is not None and now - last < interval:
        return
    path = _host_path(HOST)
    try:
        try:
            os.utime(path)
        except FileNotFoundError:
            _write_cache_json(path, {"host": HOST})
    except OSError:
        return  # a read-only store: nothing of ours to keep alive
    _STATE.last_beat[home] = now


def _sleep(seconds):
    """time.sleep, beating meanwhile."""
    end = time.monotonic() + seconds
    while True:
        _beat()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 5.0))


def _host_lapsed(host):
    """True if host has not beaten for longer than the lease."""
    return _older_than_lease(_host_path(host))


def _older_than_lease(path):
    try:
        return time.time() - os.stat(path).st_mtime > _host_lease()
    except OSError:
        return True


# ---------------------------------------------------------------------------
## 5. Locks
# ---------------------------------------------------------------------------

RUN_STATUS = "run-status"


class _LockState:
    """One per lock file in this process: record locks are per process."""

    def __init__(self):
        self.thread_lock = threading.RLock()
        self.depth = 0
        self.fd = None


class Lock:
    """A named inter-process lock: a file under GUILD_HOME/locks.

    Use as a context manager. The guild home is resolved when the lock is
    acquired; waiting longer than timeout seconds raises LockTimeout.
    """

    def __init__(self, name, timeout=None):
        self.name = name
        self.timeout = timeout
        self._state = None

    def acquire(self):
        """Acquire the lock, waiting up to self.timeout seconds."""
        locks_dir = os.path.join(_guild_home(), "locks")
        _ensure_dir(locks_dir)  # not healed: others may hold locks there
        path = os.path.join(locks_dir, self.name)
        if os.path.isdir(path):
            raise GuildError("the lock file '%s' is a directory: remove it "
                             "(guild makes it anew)" % path)
        with _STATE.lock_guard:
            state = _STATE.lock_states.setdefault(path, _LockState())
        deadline = None if self.timeout is None else (
            time.monotonic() + self.timeout)
        if not state.thread_lock.acquire(
                timeout=-1 if deadline is None else self.timeout):
            raise self._timeout_error()
        try:
            if state.depth == 0:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    self._wait_for(fd, deadline)
                except BaseException:
                    os.close(fd)
                    raise
                state.fd = fd
            state.depth += 1
        except BaseException:
            state.thread_lock.release()
            raise
        self._state = state
        return self

    def _wait_for(self, fd, deadline):
        delay = 0.0002
        while not _try_lock_fd(fd):
            if deadline is not None and time.monotonic() > deadline:
                raise self._timeout_error()
            time.sleep(delay)
            delay = min(delay * 2, 0.002)  # locks are held for milliseconds

    def release(self):
        """Release the lock."""
        state = self._state
        if state is None:
            raise RuntimeError("lock %r is not held" % self.name)
        self._state = None
        state.depth -= 1
        if state.depth == 0:
            try:
                _unlock_fd(state.fd)
            finally:
                os.close(state.fd)
                state.fd = None
        state.thread_lock.release()

    def _timeout_error(self):
        return LockTimeout("timed out after %ss waiting for lock '%s'"
                           % (self.timeout, self.name))

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *_exc):
        self.release()


# ---------------------------------------------------------------------------
## 6. Flags: decoding, encoding, inference
# ---------------------------------------------------------------------------
#
# A flag definition (flagdef) is a dict: type ("string", "int", "float",
# "boolean" or None), default, help, choices, and for argparse scripts the
# option (`arg`) and argparse action kind.


def decode_flag_val(s):
    """Decode a command line flag value the way a user expects.

    yes/no/true/false/on/off are booleans, null is None, numbers are ints
    or floats, quoted text is a string, [a,b] is a list; anything else is
    the string itself. Search spaces: `[1:10]`, `uniform[a:b]` and
    `loguniform[a:b]` decode to a distribution (a dict, see
    `_distribution`); `range`, `linspace`, `logspace` and `geomspace`
    expand to lists.
    """
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    space = _decode_search_space(s)
    if space is not None:
        return space
    lower = s.lower()
    if lower in ("yes", "true", "on"):
        return True
    if lower in ("no", "false", "off"):
        return False
    if lower == "null":
        return None
    if _INT_RE.match(s):
        try:
            return int(s)
        except ValueError:  # more digits than int() takes (Python 3.11+)
            raise FlagError("invalid number %s...: too many digits"
                            % s[:20])
    if _FLOAT_RE.match(s):
        return float(s)
    return s


def _split_list(body):
    """Split the inside of [a, 'b,c', d] on top-level commas."""
    if not body.strip():
        return []
    parts, cur, quote, depth = [], [], None, 0
    for ch in body:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            cur.append(ch)
        elif ch == "[":
            depth += 1
            cur.append(ch)
        elif ch == "]":
            depth -= 1
            cur.append(ch)
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts]

_SEARCH_RE = re.compile(r"^([a-z]*)\[(.*)\]$", re.DOTALL)
DISTRIBUTIONS = ("uniform", "loguniform")
SEQUENCES = ("range", "linspace", "logspace", "geomspace")


def _distribution(kind, low, high):
    """A search dimension sampled by random search: {"$dist": kind, ...}."""
    return {"$dist": kind, "low": low, "high": high}


def is_distribution(val):
    """True if val is a distribution flag value (uniform, loguniform)."""
    return isinstance(val, dict) and val.get("$dist") in DISTRIBUTIONS


def _search_form(s):
    """(function, body) of a `[...]` value: function "" for a list,
    "uniform" for a bare `[LOW:HIGH]`; None for plain text such as
    `a[b]`."""
    m = _SEARCH_RE.match(s)
    if not m:
        return None
    fn, body = m.groups()
    if fn == "" and ":" in body and "," not in body and \
            not re.search(r"['\"]", body):
        fn = "uniform"
    if fn and fn not in DISTRIBUTIONS + SEQUENCES:
        return None
    return fn, body


def _decode_search_space(s):
    """Decode `[...]` forms: a list, a range, a distribution, a sequence.

    Returns None if s is not one of them; raises FlagError if it is one
    with bad arguments.
    """
    form = _search_form(s)
    if form is None:
        return None
    fn, body = form
    if fn == "":
        return [decode_flag_val(part) for part in _split_list(body)]
    args = _search_args(fn, s, body)
    if fn in DISTRIBUTIONS:
        if len(args) != 2:
            raise FlagError("invalid %s: expected %s[LOW:HIGH]" % (s, fn))
        low, high = args
        if not low < high:
            raise FlagError("invalid %s: LOW must be less than HIGH" % s)
        if fn == "loguniform":
            if low <= 0:
                raise FlagError("invalid %s: loguniform bounds must be "
                                "greater than 0" % s)
            low, high = float(low), float(high)
        return _distribution(fn, low, high)
    return _expand_sequence(fn, s, args)


def _search_args(fn, s, body):
    args = []
    for part in body.split(":"):
        val = decode_flag_val(part) if part.strip() else None
        if val is None or isinstance(val, bool) or \
                not isinstance(val, (int, float)):
            raise FlagError("invalid %s: %s takes numbers, as in %s"
                            % (s, fn, _SEARCH_USAGE[fn]))
        if not math.isfinite(val) or abs(val) > MAX_SEARCH_NUMBER:
            raise FlagError("invalid %s: %s is out of range (at most %g "
                            "either side of 0)" % (s, part.strip(),
                                                   MAX_SEARCH_NUMBER))
        args.append(val)
    return args


_SEARCH_USAGE = {
    "uniform": "uniform[0.0:1.0]", "loguniform": "loguniform[1e-5:1e-1]",
    "range": "range[1:10:2]", "linspace": "linspace[0:1:5]",
    "logspace": "logspace[-5:-1:5]", "geomspace": "geomspace[1:1000:4]",
}


def _round(x):
    """Round away float noise: 0.30000000000000004 is 0.3."""
    return float("%.12g" % x)


def _expand_sequence(fn, s, args):
    try:
        values = _sequence_values(fn, s, args)
    except OverflowError:
        values = None
    if values is None or not all(map(math.isfinite, values)):
        raise FlagError("invalid %s: its values are out of range" % s)
    return values


def _check_count(s, count):
    if count > MAX_SEQUENCE_VALUES:
        raise FlagError(
            "invalid %s: %d values, more than the %d a list may hold; for "
            "a larger space use random search over uniform[LOW:HIGH]"
            % (s, count, MAX_SEQUENCE_VALUES))


def _sequence_values(fn, s, args):
    if fn == "range":
        if len(args) not in (2, 3):
            raise FlagError("invalid %s: expected range[START:STOP:STEP]"
                            % s)
        start, stop = args[0], args[1]
        step = args[2] if len(args) == 3 else 1
        if step == 0:
            raise FlagError("invalid %s: STEP cannot be 0" % s)
        if (stop - start) * step < 0:
            raise FlagError("invalid %s: STEP goes away from STOP" % s)
        if all(isinstance(a, int) for a in (start, stop, step)):
            count = (stop - start) // step + 1
        else:
            count = int((stop - start) / step + 1e-9) + 1
        _check_count(s, count)
        if all(isinstance(a, int) for a in (start, stop, step)):
            return [start + i * step for i in range(count)]
        return [_round(start + i * step) for i in range(count)]
    if len(args) not in (2, 3):
        raise FlagError("invalid %s: expected %s" % (s, _SEARCH_USAGE[fn]))
    start, stop = args[0], args[1]
    count = args[2] if len(args) == 3 else 5
    if not isinstance(count, int) or count < 1:
        raise FlagError("invalid %s: COUNT must be a whole number of at "
                        "least 1" % s)
    _check_count(s, count)
    if fn == "geomspace" and (start == 0 or stop == 0 or
                              (start < 0) != (stop < 0)):
        raise FlagError("invalid %s: geomspace bounds must be non-zero "
                        "and of one sign" % s)
    points = [start + (stop - start) * i / max(count - 1, 1)
              for i in range(count)]
    if fn == "linspace":
        return [_round(x) for x in points]
    if fn == "logspace":
        return [_round(10.0 ** x) for x in points]
    ratio = (stop / start) ** (1.0 / max(count - 1, 1))
    return [_round(start * ratio ** i) for i in range(count)]



def encode_flag_val(val):
    """Encode a flag value as a user would type it: yes, 0.1, 'a b'."""
    if val is True:
        return "yes"
    if val is False:
        return "no"
    if val is None:
        return "null"
    if isinstance(val, list):
        return "[%s]" % ", ".join(encode_flag_val(x) for x in val)
    if is_distribution(val):
        return "%s[%s:%s]" % (val["$dist"], encode_flag_val(val["low"]),
                              encode_flag_val(val["high"]))
    if isinstance(val, (int, float)):
        return repr(val)
    s = str(val)
    if (s == "" or _decodes_to_other(s) or s != s.strip()
            or re.search(r"[\s,'\"\[\]=]", s)):
        quote = '"' if "'" in s else "'"
        return quote + s + quote
    return s


def _decodes_to_other(s):
    try:
        return decode_flag_val(s) != s
    except FlagError:  # looks like a search space: quote it
        return True


def format_flags(flags, sep=" "):
    """`loud=no msg=hi`: flags sorted by name."""
    return sep.join("%s=%s" % (name, encode_flag_val(flags[name]))
                    for name in sorted(flags))


def _default_label(flags, tags=()):
    """The label of a run given none: its tags, then its flags."""
    return " ".join(list(tags) + [format_flags(
        {k: v for k, v in flags.items() if v is not None})]).strip()


def _flagdef_type_for_value(val):
    if isinstance(val, bool):
        return "boolean"
    if isinstance(val, int):
        return "int"
    if isinstance(val, float):
        return "float"
    if isinstance(val, str):
        return "string"
    return None


def _coerce_flag_val(name, raw, flagdef):
    """Decode the command line text raw for flag name, typed by flagdef.

    Numbers keep the type the user typed (x=4 is the int 4 even where the
    default is 0.1, as in Guild AI), unless the script declares the
    flag's type (argparse's or click's type=int: flagdef `declared`),
    which refuses what that type cannot take. A list value (a batch) is
    coerced element by element, a sequence's values likewise; a float
    flag's distribution samples floats.
    """
    _check_text(name, raw)
    stripped = raw.strip()
    form = _search_form(stripped)
    if form is not None and form[0] == "":  # a list: type each element
        return [_coerce_one(name, part, flagdef)
                for part in _split_list(form[1])]
    space = _decode_search_space(stripped)
    if isinstance(space, list):
        return [_coerce_number(name, raw, x, flagdef) for x in space]
    if space is not None:
        if space["$dist"] == "uniform":
            for bound in ("low", "high"):
                space[bound] = _coerce_number(name, raw, space[bound],
                                              flagdef)
                if (flagdef or {}).get("type") == "float":
                    space[bound] = float(space[bound])
        elif (flagdef or {}).get("type") in ("string", "boolean") or \
                _declared_int(flagdef):
            raise FlagError("invalid value %s for %s: loguniform gives "
                            "floats" % (raw, name))
        return space
    return _coerce_one(name, raw, flagdef)


def _declared_int(flagdef):
    """True if the script itself makes the flag's value an int."""
    return (flagdef or {}).get("type") == "int" and \
        bool((flagdef or {}).get("declared"))


_UNSAFE_TEXT_RE = re.compile("[\0\ud800-\udfff]")


def _check_text(name, text):
    """FlagError if text cannot be a flag value: a NUL byte (no process
    argument can hold one) or a lone surrogate (text that is not Unicode,
    such as bytes that are not UTF-8)."""
    bad = _UNSAFE_TEXT_RE.search(text)
    if bad:
        raise FlagError("invalid value for %s: %s" % (name, "a NUL byte is "
                        "not allowed" if bad.group() == "\0" else
                        "not valid Unicode text (%r)" % bad.group()))


def _coerce_number(name, raw, x, flagdef):
    ftype = (flagdef or {}).get("type")
    if _declared_int(flagdef) and not isinstance(x, int):
        raise FlagError("invalid value %s for %s: expected integers"
                        % (raw, name))
    if ftype in ("string", "boolean"):
        raise FlagError("invalid value %s for %s: a %s flag takes no "
                        "numeric range" % (raw, name, ftype))
    return x


def _coerce_one(name, raw, flagdef):
    if (flagdef or {}).get("nargs") is not None and len(raw.split()) > 1:
        # words for an option taking several values: each is checked
        one = dict(flagdef, nargs=None)
        for word in raw.split():
            _coerce_one(name, word, one)
        return raw.strip()
    ftype = (flagdef or {}).get("type")
    val = decode_flag_val(raw)
    is_number = isinstance(val, (int, float)) and not isinstance(val, bool)
    if ftype == "string" and isinstance(val, (bool, int, float)):
        val = raw.strip()
    elif ftype in ("int", "float") and val is not None:
        if not is_number:
            raise FlagError("invalid value %s for %s: expected a number"
                            % (raw, name))
        if _declared_int(flagdef) and not isinstance(val, int):
            raise FlagError("invalid value %s for %s: expected an integer"
                            % (raw, name))
    elif ftype == "boolean":
        if is_number and val in (0, 1):
            val = bool(val)
        elif not isinstance(val, bool):
            raise FlagError("invalid value %s for %s: expected yes or no"
                            % (raw, name))
    choices = (flagdef or {}).get("choices")
    if choices and val not in choices:
        raise FlagError("invalid value %s for %s: choose from %s" % (
            raw, name, ", ".join(encode_flag_val(c) for c in choices)))
    return val


def _parse_flag_args(args):
    """Split NAME=VALUE words into a dict of raw strings, in order."""
    raw = {}
    for arg in args:
        name, sep, val = arg.partition("=")
        if not sep or not _FLAG_NAME_RE.match(name):
            raise FlagError("invalid argument '%s': expected NAME=VALUE"
                            % arg)
        raw[name] = val
    return raw


def _flag_args(flags, flagdefs):
    """The command line arguments that give a script its flag values.

    A value goes as `--name=VALUE` (a value may start with '-'), a short
    option's as `-n VALUE`; yes/no options (store_true, store_false,
    --x/--no-x switches) as the option that says it; an option taking
    several values gets the words of its value (`layers='64 32'` is
    `--layers 64 32`); a `type=bool` option gets 1 or '' (bool('no') is
    True). A flag the script does not declare (--force-flags) goes as
    `--name VALUE`, yes and no as 1 and '', as Guild AI passes them.
    """
    args = []
    for name in sorted(flags):
        val = flags[name]
        fd = flagdefs.get(name)
        if fd is None:
            if val is not None:
                args += ["--" + name, ("1" if val else "") if isinstance(
                    val, bool) else _arg_text(val)]
            continue
        arg, kind = fd.get("arg", "--" + name), fd.get("kind", "store")
        if kind == "store_true":
            args += [arg] if val else []
        elif kind == "store_false":
            args += [arg] if val is False else []
        elif kind == "switch":
            args += [] if val is None else [arg if val else fd["off_arg"]]
        elif val is None:
            continue
        elif kind == "bool_value":
            args += _option_arg(arg, "1" if val else "")
        elif fd.get("nargs") is not None:
            import shlex
            args += [arg] + (shlex.split(val) if isinstance(val, str)
                             else [_arg_text(val)])
        else:
            args += _option_arg(arg, _arg_text(val))
    return args


def _arg_text(val):
    return val if isinstance(val, str) else encode_flag_val(val)


def _option_arg(arg, text):
    if arg.startswith("--"):
        return ["%s=%s" % (arg, text)]
    return [arg + text] if text.startswith("-") else [arg, text]


# Flag inference. An argparse script is asked for its parser in a child
# process that stops at parse_args (the probe, section 11; cached by the
# script's content); any other script's flags are its module-level literal
# assignments.

def _script_flagdefs(script_path):
    """Return (mode, flagdefs) for a script: mode is args or globals.

    Cached under GUILD_HOME/cache/flags by the script's content: two
    checksums and the length name the entry, and the entry keeps the
    source, so a hit is checked byte for byte.
    """
    with open(script_path, "rb") as f:
        source = f.read()
    this = os.stat(_THIS_FILE)  # a changed guild.py may probe otherwise
    salted = source + b"%d %d" % (this.st_size, this.st_mtime_ns)
    key = "%08x%08x%d" % (zlib.crc32(salted), zlib.adler32(salted),
                          len(source))
    cache_path = os.path.join(_guild_home(), "cache", "flags",
                              key + ".json")
    cached = _read_json(cache_path)
    if isinstance(cached, dict) and cached.get("source") == \
            source.decode("utf-8", "replace") and cached.get("mode") in (
                "args", "globals") and _sound_flagdefs(cached.get("flags")):
        return cached["mode"], cached["flags"]
    import ast  # only when a script is new or changed
    try:
        tree = ast.parse(source, script_path)
    except SyntaxError as e:
        raise OpError("cannot read flags from %s: %s (line %s)"
                      % (script_path, e.msg, e.lineno))
    mode, flags = "globals", None
    if _imports_parser(ast, tree):
        flags = _argparse_flagdefs(script_path, cache_path)
        if flags is not None:
            mode = "args"
    if flags is None:
        flags = _globals_flagdefs(ast, tree)
    _write_cache_json(cache_path, {"mode": mode, "flags": flags,
                                   "source": source.decode("utf-8",
                                                           "replace")})
    return mode, flags


def _sound_flagdefs(flags):
    """True if flags (from the flags cache) are flag defs guild can use;
    a damaged entry is made anew."""
    return isinstance(flags, dict) and all(
        isinstance(fd, dict)
        and fd.get("type") in (None, "string", "int", "float", "boolean")
        and isinstance(fd.get("choices") or [], list)
        and isinstance(fd.get("help") or "", str)
        and isinstance(fd.get("arg", ""), str)
        and isinstance(fd.get("kind", ""), str)
        for fd in flags.values())


_PARSER_MODULES = ("argparse", "click")
_CLICK_IMPORT_RE = re.compile(rb"^[ \t]*(?:import|from)[ \t]+click\b", re.M)


def _imports_parser(ast, tree):
    """True if the script imports argparse or click: its flags are then
    its options, which a probe asks for."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            if any(a.name.partition(".")[0] in _PARSER_MODULES
                   for a in node.names):
                return True
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and \
                (node.module or "").partition(".")[0] in _PARSER_MODULES:
            return True
    return False


def _module_assignments(ast, tree):
    """(name, node) for each module-level assignment to one name: where a
    globals-style script's flags are read from, and replaced in a run."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target = node.target
        else:
            continue
        if isinstance(target, ast.Name):
            yield target.id, node


def _globals_flagdefs(ast, tree):
    defs, seen = {}, set()
    for name, node in _module_assignments(ast, tree):
        if name.startswith("_") or name in seen:
            continue
        seen.add(name)  # the first assignment is the default
        try:
            val = ast.literal_eval(node.value)
        except ValueError:
            continue
        if val is not None and _flagdef_type_for_value(val) is None:
            continue
        defs[name] = {"type": _flagdef_type_for_value(val),
                      "default": val, "help": ""}
    return defs


def _argparse_flagdefs(script_path, cache_path):
    """Flag defs from the script's argparse parser, or None if it has none.

    The script runs in a child process that stops at parse_args (the
    probe, section 11).
    """
    out_path = "%s.%s.out" % (cache_path, os.urandom(4).hex())
    _ensure_cache_dir(os.path.dirname(cache_path))
    script = os.path.abspath(script_path)
    proc = _start_script_process(
        ["probe", out_path, script], os.path.dirname(script),
        dict(os.environ, PYTHONDONTWRITEBYTECODE="1"), None,
        _fork_possible())
    deadline = time.monotonic() + FLAGS_PROBE_TIMEOUT
    delay = 0.001
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            log.warning("%s did not reach parse_args in %ss; using its "
                        "module globals as flags", script_path,
                        FLAGS_PROBE_TIMEOUT)
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    probed = _read_json(out_path)
    _remove(out_path)
    if not isinstance(probed, list):
        return None
    flags = {}
    for item in probed:
        name = item.pop("name")
        flags[name] = item
    return flags


def _flagdefs_help(op_name, flagdefs, doc=None):
    lines = ["Usage: guild run [OPTIONS] %s [FLAG]..." % op_name, ""]
    if doc:
        lines += [doc, ""]
    lines += ["Use 'guild run --help' for a list of options.", ""]
    if not flagdefs:
        lines.append("No flags.")
        return "\n".join(lines)
    lines.append("Flags:")
    width = max(len(name) for name in flagdefs)
    for name in sorted(flagdefs):
        fd = flagdefs[name]
        desc = fd.get("help") or ""
        default = fd.get("default")
        default_desc = ("(default is %s)" % encode_flag_val(default)
                        if default is not None else "(required)"
                        if fd.get("required") else "(default is unspecified)")
        text = ("%s %s" % (desc, default_desc)).strip()
        lines.append("  %s  %s" % (name.ljust(width), text))
        if fd.get("choices"):
            lines.append("  %s  Choices: %s" % (" " * width, ", ".join(
                encode_flag_val(c) for c in fd["choices"])))
    return "\n".join(lines)


# ---------------------------------------------------------------------------
## 7. TensorBoard event files
# ---------------------------------------------------------------------------
#
# Scripts that log with torch's or tensorboardX's SummaryWriter, or with
# tf.summary, print nothing: their scalars are in `*.tfevents.*` files.
# Such a file is a sequence of TFRecords (an 8-byte little-endian length,
# the masked CRC-32C of those 8 bytes, the payload, the payload's masked
# CRC-32C); each payload is an `Event` protobuf. The primitives below
# (CRC-32C, varints, protobuf fields, framing) serve readers and writers.

_CRC32C_TABLE = []  # filled on first use: most commands never need it


def _crc32c(data):
    """The CRC-32C (Castagnoli) of bytes data; the standard library has
    only the other CRC-32."""
    table = _CRC32C_TABLE
    if not table:
        for n in range(256):
            for _ in range(8):
                n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
            table.append(n)
    crc = 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data):
    """The CRC as TFRecords store it: rotated right 15 bits, plus a
    constant (so that a CRC of CRC-bearing data is not trivial)."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _encode_varint(n):
    """A protobuf varint; a negative int64 takes ten bytes."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _decode_varint(buf, pos):
    """(value, position after it) of the varint at buf[pos]."""
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _proto_field(number, value):
    """One protobuf field: an int is a varint, bytes are length-delimited
    (a string or a message), a float is a double; for a float32 or other
    fixed-size encodings pass (wire_type, packed bytes)."""
    if isinstance(value, tuple):
        wire, data = value
        return _encode_varint(number << 3 | wire) + data
    if isinstance(value, int):
        return _encode_varint(number << 3) + _encode_varint(value)
    if isinstance(value, float):
        return _encode_varint(number << 3 | 1) + struct.pack("<d", value)
    return (_encode_varint(number << 3 | 2) + _encode_varint(len(value))
            + value)


def _proto_fields(buf, pos, end):
    """The fields of the message in buf[pos:end]: (number, wire type,
    value), value an int for a varint, else the position where its bytes
    start (fixed 8 or 4 bytes), or (start, end) for length-delimited."""
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = _decode_varint(buf, pos)
        wire = key & 7
        if wire == 0:
            if buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = _decode_varint(buf, pos)
        elif wire == 2:
            size = buf[pos]
            if size < 0x80:
                pos += 1
            else:
                size, pos = _decode_varint(buf, pos)
            value = (pos, pos + size)
            pos += size
        elif wire == 1:
            value = pos
            pos += 8
        elif wire == 5:
            value = pos
            pos += 4
        else:  # groups (3, 4) are not in event files
            raise ValueError("wire type %d" % wire)
        if pos > end:
            raise ValueError("field past the end of its message")
        yield key >> 3, wire, value


def _tfrecord(payload):
    """payload framed as a TFRecord."""
    header = struct.pack("<Q", len(payload))
    return (header + struct.pack("<I", _masked_crc32c(header)) + payload
            + struct.pack("<I", _masked_crc32c(payload)))


def _scalar_event(tag, value, step, wall_time):
    """An Event payload of one `simple_value` scalar, laid out as
    TensorBoard's writers lay it out (wall_time, step, summary)."""
    if value == value and abs(value) > 3.4e38:  # past float32: infinite
        value = math.copysign(float("inf"), value)
    summary_value = (_proto_field(1, tag.encode("utf-8"))
                     + _proto_field(2, (5, struct.pack("<f", value))))
    return (_proto_field(1, float(wall_time)) + _proto_field(2, int(step))
            + _proto_field(5, _proto_field(1, summary_value)))


def _event_file_header(wall_time):
    """The record an event file starts with: its format version."""
    return _tfrecord(_proto_field(1, float(wall_time))
                     + _proto_field(3, b"brain.Event:2"))


def _event_records(records):
    """TFRecords of scalar records (tag, value, step, time in
    microseconds), one Event each."""
    return b"".join(_tfrecord(_scalar_event(tag, value, step, ts / 1e6))
                    for tag, value, step, ts in records)


# TensorProto dtypes a scalar can have, and how one element is stored.
_TENSOR_FLOATS = {1: ("<f", 5), 2: ("<d", 6), 19: ("<e", 13)}


def _event_scalars(buf, start, end):
    """(step, wall time, [(tag, value)]) of the Event in buf[start:end].

    A scalar is a Summary.Value's `simple_value` (tensorboardX, torch,
    TF1), or its `tensor` holding one float (TF2's tf.summary.scalar,
    tensorboard's own writer), unless its metadata names a plugin other
    than scalars (histograms, hparams, text...). Raises ValueError or
    IndexError where the bytes are not an Event.
    """
    step, wall_time, summary = 0, 0.0, None
    for number, wire, value in _proto_fields(buf, start, end):
        if number == 1 and wire == 1:
            wall_time = struct.unpack_from("<d", buf, value)[0]
        elif number == 2 and wire == 0:
            step = value - (1 << 64) if value >= 1 << 63 else value
        elif number == 5 and wire == 2:
            summary = value
    scalars = []
    if summary is None:
        return step, wall_time, scalars
    for number, wire, value in _proto_fields(buf, *summary):
        if number != 1 or wire != 2:
            continue
        tag = simple = tensor = plugin = None
        for number, wire, field in _proto_fields(buf, *value):
            if number == 1 and wire == 2:
                tag = buf[field[0]:field[1]].decode("utf-8", "replace")
            elif number == 2 and wire == 5:
                simple = struct.unpack_from("<f", buf, field)[0]
            elif number == 8 and wire == 2:
                tensor = field
            elif number == 9 and wire == 2:
                plugin = _summary_plugin(buf, field)
        if tag is None:
            continue
        if simple is not None:
            scalars.append((tag, simple))
        elif tensor is not None and plugin in (None, "scalars"):
            val = _tensor_scalar(buf, tensor)
            if val is not None:
                scalars.append((tag, val))
    return step, wall_time, scalars


def _summary_plugin(buf, metadata):
    """The plugin name in a SummaryMetadata, or None."""
    for number, wire, value in _proto_fields(buf, *metadata):
        if number == 1 and wire == 2:  # plugin_data
            for number2, wire2, value2 in _proto_fields(buf, *value):
                if number2 == 1 and wire2 == 2:
                    return buf[value2[0]:value2[1]].decode("utf-8",
                                                           "replace")
    return None


def _tensor_scalar(buf, tensor):
    """The value of a TensorProto holding exactly one float, double or
    half, else None (integer tensors are not scalars, as in Guild AI)."""
    dtype, elements = None, []
    for number, wire, value in _proto_fields(buf, *tensor):
        if number == 1 and wire == 0:
            dtype = value
        elif number == 4 and wire == 2:  # tensor_content: raw bytes
            elements.append(("content", value))
        elif wire == 2 and number in (5, 6, 13):  # packed repeated
            elements.append((number, value))
        elif (number, wire) in ((5, 5), (6, 1)):
            elements.append((number, (value, value + (4 if wire == 5
                                                      else 8))))
    fmt_field = _TENSOR_FLOATS.get(dtype)
    if fmt_field is None or len(elements) != 1:
        return None
    (fmt, field), (kind, (lo, hi)) = fmt_field, elements[0]
    if kind == "content":
        if hi - lo != struct.calcsize(fmt):
            return None
        return float(struct.unpack_from(fmt, buf, lo)[0])
    if kind != field:
        return None
    if field == 13:  # half_val: the 16 bits in a varint
        bits, end = _decode_varint(buf, lo)
        return float(struct.unpack("<e", struct.pack("<H", bits))[0]) \
            if end == hi else None
    size = struct.calcsize(fmt)
    if hi - lo != size:
        return None
    return float(struct.unpack_from(fmt, buf, lo)[0])


def _simple_value_event(buf, start, end, tags):
    """(step, wall time, tag, value) of an Event laid out as writers lay
    out one `simple_value` scalar (wall_time, step, then a summary of
    one value: tag, simple_value), else None: the common case, read
    here five times faster than by _event_scalars. tags caches decoded
    tag names."""
    if buf[start] != 0x09:  # wall_time
        return None
    pos = start + 9
    step = 0
    if buf[pos] == 0x10:
        if buf[pos + 1] < 0x80:
            step, pos = buf[pos + 1], pos + 2
        elif buf[pos + 2] < 0x80:
            step, pos = (buf[pos + 1] & 0x7F) | buf[pos + 2] << 7, pos + 3
        elif buf[pos + 3] < 0x80:
            step = ((buf[pos + 1] & 0x7F) | (buf[pos + 2] & 0x7F) << 7
                    | buf[pos + 3] << 14)
            pos += 4
        else:
            step, pos = _decode_varint(buf, pos + 1)
            if step >= 1 << 63:
                step -= 1 << 64
    # summary { value { tag: ..., simple_value: ... } }, lengths < 128
    if (buf[pos] != 0x2A or buf[pos + 1] > 0x7F
            or pos + 2 + buf[pos + 1] != end
            or buf[pos + 2] != 0x0A or buf[pos + 3] != buf[pos + 1] - 2
            or buf[pos + 4] != 0x0A or buf[pos + 5] != buf[pos + 3] - 7
            or buf[end - 5] != 0x15):
        return None
    raw_tag = buf[pos + 6:end - 5]
    tag = tags.get(raw_tag)
    if tag is None:
        tag = tags[raw_tag] = raw_tag.decode("utf-8", "replace")
    return (step, struct.unpack_from("<d", buf, start + 1)[0], tag,
            struct.unpack_from("<f", buf, end - 4)[0])


EVENT_READ_CHUNK = 1 << 22  # bytes of an event file read at a time


def _read_event_file(path, offset=0):
    """Scalars in the event file at path from byte offset on.

    Returns (records, offset, damaged): records are (tag, value, step,
    wall time in microseconds); offset is where the next read starts (a
    record still being written is read next time); damaged is the offset
    of a record whose length fails its checksum, after which nothing is
    read, else None. A record whose payload is not an Event is skipped;
    payload checksums are not checked (that would cost 2.5 times more).
    """
    records, damaged = [], None
    good_headers = {}  # a scalar file's records have few distinct lengths
    tags = {}
    with open(path, "rb") as f:
        f.seek(offset)
        buf, pos = b"", 0
        while True:
            chunk = f.read(EVENT_READ_CHUNK)
            if not chunk:
                break
            buf = buf[pos:] + chunk
            pos = 0
            end = len(buf)
            while pos + 12 <= end:
                header = buf[pos:pos + 12]
                size = good_headers.get(header)
                if size is None:
                    size, crc = struct.unpack("<QI", header)
                    if _masked_crc32c(header[:8]) != crc:
                        damaged = offset
                        break
                    good_headers[header] = size
                if pos + 16 + size > end:
                    break
                try:
                    simple = _simple_value_event(buf, pos + 12,
                                                 pos + 12 + size, tags)
                    if simple is not None:
                        step, wall_time, tag, value = simple
                        scalars = ((tag, value),)
                    else:
                        step, wall_time, scalars = _event_scalars(
                            buf, pos + 12, pos + 12 + size)
                except (ValueError, IndexError, struct.error):
                    scalars = ()
                for tag, value in scalars:
                    records.append((tag, value, step,
                                    int(wall_time * 1000000)))
                pos += 16 + size
                offset += 16 + size
            if damaged is not None:
                break
    return records, offset, damaged


# ---------------------------------------------------------------------------
## 8. Runs: the run directory, its status and its scalars
# ---------------------------------------------------------------------------


class OpRef:
    """What a run runs: kind (script, batch or queue) and name."""

    def __init__(self, kind, name):
        self.kind = kind
        self.name = name

    def to_opspec(self):
        """The operation as typed on the command line: say.py, +, queue."""
        return self.name

    def __repr__(self):
        return "<guild.OpRef %s:%s>" % (self.kind, self.name)


class Run:
    """A run directory. Attributes are read from disk each time."""

    def __init__(self, id, dir):
        self.id = id
        self.dir = dir

    @property
    def path(self):
        """The run directory (Guild AI's name for it)."""
        return self.dir

    @property
    def short_id(self):
        """The first eight characters of the id."""
        return self.id[:SHORT_ID_LEN]

    def guild_path(self, *parts):
        """A path inside the run's .guild directory."""
        return os.path.join(self.dir, ".guild", *parts)

    def _attrs(self):
        attrs, problem = _read_record(self.guild_path(RUN_ATTRS))
        if attrs is None:
            raise RunError("run %s has no readable %s: it %s" % (
                self.id, RUN_ATTRS, problem or "is missing"))
        return attrs

    def get(self, name, default=None):
        """Return attribute name: flags, label, started, exit_status ..."""
        if name in ("started", "pid"):
            return _read_dict(self.guild_path(PROC_ATTRS)).get(name, default)
        if name in ("stopped", "exit_status"):
            return _read_dict(self.guild_path(EXIT_ATTRS)).get(name, default)
        return _read_dict(self.guild_path(RUN_ATTRS)).get(name, default)

    @property
    def opref(self):
        """The run's OpRef."""
        op = self.get("op") or {}
        return OpRef(op.get("kind"), op.get("name"))

    @property
    def op_desc(self):
        """The operation as listings show it: say.py, say.py+, queue;
        ? if its run.json is unreadable."""
        return _op_desc(_read_dict(self.guild_path(RUN_ATTRS)))

    @property
    def flags(self):
        """The run's flag values."""
        return self.get("flags") or {}

    @property
    def status(self):
        """staged, pending, running, completed, error or terminated."""
        return run_status(self.dir)

    def scalars(self):
        """The last value of each scalar the run printed: {key: value}."""
        return _last_scalars(self.dir)

    def scalar_history(self):
        """Every scalar record: [(key, value, step, time)]."""
        return read_scalars(self.dir)

    def __eq__(self, other):
        return isinstance(other, Run) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return "<guild.Run %s>" % self.id


def _path_inside(root, rel):
    """The real path of rel under directory root, or None if rel leaves
    root: an absolute path, `..` above it, or a symlink that points out."""
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, rel))
    try:
        inside = os.path.commonpath([root, path]) == root
    except ValueError:  # another drive
        inside = False
    if os.path.isabs(rel) or os.path.splitdrive(rel)[0] or not inside:
        return None
    return path


def _run_file(run, rel):
    """The path of file rel in run's directory; RunError if rel leaves
    it (see _path_inside). Every command that takes a path inside a run
    (cat, ls, diff) goes through here."""
    path = _path_inside(run.dir, rel)
    if path is None:
        raise RunError("'%s' is not a path inside run %s" % (rel, run.id))
    return path


def _op_desc(attrs):
    op = _field(attrs, "op", dict)
    name = _field(op, "name", str, "?")
    if op.get("kind") == "batch":
        proto_op = _field(_field(attrs, "proto", dict), "op", dict)
        return "%s+%s" % (_field(proto_op, "name", str, "?"),
                          "" if name == "+" else name)
    return name


def _unstartable(attrs):
    """Why a run with attrs (run.json) cannot start, or None."""
    op = _field(attrs, "op", dict)
    kind = op.get("kind")
    if kind == "batch":
        op = _field(_field(attrs, "proto", dict), "op", dict)
        if op.get("kind") != "script":
            return "its run.json names no script for its trials"
    elif kind not in ("script", "queue"):
        return "its run.json names no operation"
    if op.get("kind") == "script" and not (
            _field(op, "script", str) and _field(op, "project", str)):
        return "its run.json names no script"
    return None


_OP_KINDS = ("script", "batch", "queue")
_EXIT_STATUSES = ("completed", "error", "terminated")
RUN_STATUSES = ("staged", "pending", "running") + _EXIT_STATUSES


STATUS_FILTERS = ("staged", "pending", "running", "completed", "error",
                  "terminated")


def run_status(run_dir):
    """Derive a run's status from the files in its .guild directory.

    Nothing is guessed: an exit record says how a run ended; a process
    record means running if that very process (pid plus start time), or
    the script it started, is alive, and error if both died before an exit
    was recorded. A claim by a live process means pending; a dead
    claimer's claim is void, so its run is staged again. These files are
    written whole (see _write_json): one that is there but unreadable was
    damaged after, and its run is error.
    """
    gdir = os.path.join(run_dir, ".guild")
    exit_attrs, problem = _read_record(os.path.join(gdir, EXIT_ATTRS))
    if exit_attrs is not None:
        status = exit_attrs.get("status")
        return status if status in _EXIT_STATUSES else "error"
    if problem:
        return "error"
    proc_path = os.path.join(gdir, PROC_ATTRS)
    proc, proc_problem = _read_record(proc_path)
    if proc is not None:
        alive = _owner_alive(proc, proc_path) or _owner_alive(
            proc.get("child"), proc_path)
        return "running" if alive else "error"
    claim_path = os.path.join(gdir, PENDING_CLAIM)
    claim, claim_problem = _read_record(claim_path)
    if proc_problem or claim_problem:
        return "error"
    if claim is not None and _owner_alive(claim, claim_path):
        return "pending"
    if os.path.exists(os.path.join(gdir, STAGED_MARKER)):
        op = _field(_read_record(os.path.join(gdir, RUN_ATTRS))[0], "op",
                    dict)
        return "staged" if op.get("kind") in _OP_KINDS else "error"
    return "error"


def _damage(run):
    """What is wrong with a run's metadata files: ["FILE PROBLEM"]."""
    found = []
    for name in (RUN_ATTRS, PROC_ATTRS, EXIT_ATTRS, PENDING_CLAIM):
        problem = _read_record(run.guild_path(name))[1]
        if name == RUN_ATTRS and problem is None:
            if not os.path.exists(run.guild_path(name)):
                problem = "is missing"
            else:
                problem = _unstartable(run._attrs())
                problem = problem and problem.replace("its run.json ", "")
        if problem:
            found.append("%s %s" % (name, problem))
    for name in (OUTPUT_FILE, SCALARS_FILE):
        if os.path.isdir(run.guild_path(name)):
            found.append("%s is a directory" % name)
    bad_lines = _printed_scalar_lines(run.dir)[1]
    if bad_lines:
        found.append("%s has %d unreadable line%s" % (
            SCALARS_FILE, bad_lines, "" if bad_lines == 1 else "s"))
    return found


def _status_reason(run, status=None):
    """Why a run is in an error state it did not record, or ''; status
    is the run's, if known."""
    status = status or run.status
    exit_attrs, exit_problem = _read_record(run.guild_path(EXIT_ATTRS))
    if exit_attrs is not None:
        if exit_attrs.get("status") not in _EXIT_STATUSES:
            return "its %s records no status it can end in" % EXIT_ATTRS
        return ""
    if exit_problem:
        return "its %s %s" % (EXIT_ATTRS, exit_problem)
    if status != "error":
        return ""
    proc, proc_problem = _read_record(run.guild_path(PROC_ATTRS))
    if proc is not None:
        host = _field(proc, "host", str, HOST)
        if host != HOST:
            return ("its host %s has not been heard from for over %d s"
                    % (host, _host_lease()))
        return ("its process (pid %s) died without recording an exit"
                % proc.get("pid"))
    if proc_problem:
        return "its %s %s" % (PROC_ATTRS, proc_problem)
    attrs, attrs_problem = _read_record(run.guild_path(RUN_ATTRS))
    if attrs is None:
        return "its %s %s" % (RUN_ATTRS, attrs_problem or "is missing")
    if os.path.exists(run.guild_path(STAGED_MARKER)):
        return "it cannot start: %s" % _unstartable(attrs)
    return "it was never started"


def _run_attempts(run):
    """The interrupted attempts of a re-staged run, oldest first."""
    try:
        names = os.listdir(run.guild_path(ATTEMPTS_DIR))
    except OSError:
        return []
    numbers = sorted(int(n[:-5]) for n in names
                     if n.endswith(".json") and n[:-5].isdigit())
    return [_read_json(run.guild_path(ATTEMPTS_DIR, "%d.json" % n)) or {}
            for n in numbers]


def _run_info(run):
    """What `runs info` shows of a run, as JSON-ready values: the keys of
    `runs info --json` (documented in the README; new keys may come, none
    goes)."""
    attrs = _read_dict(run.guild_path(RUN_ATTRS))
    proc = _read_dict(run.guild_path(PROC_ATTRS))
    exit_attrs = _read_dict(run.guild_path(EXIT_ATTRS))
    flags = attrs.get("flags") or {}
    status = run.status
    return {
        "id": run.id,
        "operation": _op_desc(attrs),
        "from": attrs.get("project") or "",
        "status": status,
        "reason": _status_reason(run, status) or None,
        "damaged": _damage(run),
        "started": _format_time(proc.get("started")) or None,
        "stopped": _format_time(exit_attrs.get("stopped")) or None,
        "label": attrs.get("label") or "",
        "tags": [str(x) for x in _field(attrs, "tags", list, [])],
        "marked": bool(attrs.get("marked")),
        "run_dir": run.dir,
        "command": [str(x) for x in proc.get("command") or ()],
        "exit_status": exit_attrs.get("exit_status"),
        "pid": proc.get("pid"),
        "host": proc.get("host"),
        "slurm": _slurm_task_name(proc["slurm"]) if proc.get("slurm")
        else None,
        "batch": attrs.get("batch"),
        "sourcecode_left_out": _left_out_info(attrs),
        "attempts": [{"status": a.get("status"), "reason": a.get("reason"),
                      "started": _format_time((a.get("proc") or {})
                                              .get("started")) or None,
                      "host": (a.get("proc") or {}).get("host")}
                     for a in _run_attempts(run)],
        "flags": {n: flags[n] for n in sorted(flags)},
        "scalars": dict(sorted(_run_scalar_stats(run.dir)[0].items())),
        "comments": [{"body": c.get("body", ""), "user": c.get("user", ""),
                      "host": c.get("host", ""), "time": c.get("time")}
                     for c in _field(attrs, "comments", list, [])
                     if isinstance(c, dict)],
    }


_INFO_PARTS = ("flags", "scalars", "comments")  # shown below the items


def _left_out_info(attrs):
    """runs info's record of the files a run's snapshot left out (see
    _source_snapshot): {count, reasons, max_count, max_size, files:
    [{path, reason}]}, or None (none left out, or a damaged record)."""
    rec = _field(attrs, "sourcecode_left_out", dict)
    files = _field(rec, "files", list, [])
    if not rec or any(_field(rec, key, int) is None for key in (
            "count", "max_count", "max_size")) or not all(
            isinstance(f, list) and len(f) == 2 and isinstance(f[0], str)
            and f[1] in SOURCE_LEFT_OUT_REASONS for f in files):
        return None
    return {"count": rec["count"],
            "reasons": {r: n for r, n in _field(rec, "reasons", dict).items()
                        if r in SOURCE_LEFT_OUT_REASONS
                        and isinstance(n, int)},
            "max_count": rec["max_count"], "max_size": rec["max_size"],
            "files": [{"path": rel, "reason": reason}
                      for rel, reason in files]}


def _format_size(size):
    """A size in bytes as a user would write it: 1 MiB, 1536 bytes."""
    for unit in ("G", "M", "K"):
        scale = 1024 ** " KMG".index(unit)
        if size >= scale and size % scale == 0:
            return "%d %siB" % (size // scale, unit)
    return "%d bytes" % size


def _left_out_why(left_out):
    """{reason: why, in words} for a record of files left out."""
    return {"size": "over %s" % _format_size(left_out["max_size"]),
            "binary": "not text",
            "count": "past the %d-file limit" % left_out["max_count"]}


def _left_out_text(left_out, names=3):
    """What a run's snapshot left out (_left_out_info), in a line: how
    many, why, and the first names."""
    shown = left_out["files"][:names]
    return "%s: %s%s" % (
        _left_out_summary(left_out), " ".join(f["path"] for f in shown),
        " ..." if left_out["count"] > len(shown) else "")


def _left_out_summary(left_out):
    """How many files a snapshot left out, and why: `3 files (1 over 1
    MiB, 2 not text)`."""
    why = _left_out_why(left_out)
    return "%d file%s (%s)" % (
        left_out["count"], "" if left_out["count"] == 1 else "s",
        ", ".join("%d %s" % (n, why[r])
                  for r, n in left_out["reasons"].items()))


def _run_info_items(run, info=None):
    """A run's attributes as (name, text) pairs, as `runs info` shows
    them: id, operation, status, why (if unrecorded), times, label ...
    (info is _run_info(run) if already read)."""
    info = info or _run_info(run)
    items = []
    for key, val in info.items():
        if key in _INFO_PARTS or (key in (
                "reason", "batch", "slurm", "sourcecode_left_out",
                "attempts", "damaged", "command") and not val):
            continue
        if key == "sourcecode_left_out":
            items.append((key, _left_out_text(val, names=20)))
            continue
        if key == "damaged":
            items += [("damaged", x) for x in val]
            continue
        if key == "attempts":
            items.append(("attempts", "%d (%d interrupted)" % (
                len(val) + 1, len(val))))
            items += [("attempt %d" % n, "%s, %s, started %s on %s" % (
                a["status"], a["reason"], a["started"] or "",
                a["host"] or "?")) for n, a in enumerate(val, 1)]
            continue
        if isinstance(val, bool):
            text = "yes" if val else "no"
        elif key == "command":  # as a shell would take it back
            import shlex
            text = " ".join(shlex.quote(word) for word in val)
        elif isinstance(val, list):
            text = " ".join(val)
        else:
            text = "" if val is None else str(val)
        items.append((key, text))
    return items


def set_run_pending(run):
    """Claim a staged run for this process: its status becomes pending."""
    _write_json(run.guild_path(PENDING_CLAIM), _process_owner())


def _exit_status_name(exit_status, stopped_by_user):
    if stopped_by_user:
        return "terminated"
    if exit_status == 0:
        return "completed"
    if exit_status in (-signal.SIGTERM, -signal.SIGINT):
        return "terminated"
    return "error"


# Scalars: output lines `key: number` are recorded while a run goes, one
# JSON list [key, value, step, time] a line; `step: N` sets the step of the
# lines after it. The grammar is Guild AI's default output scalars: a key
# is anything without spaces, up to the last colon before the value (so
# `acc@5`, `val/loss`, `INFO:root:loss`); at least one space or tab, a
# number, then optionally a parenthesized note, `(step 7)` or `(7)` setting
# the step from there on. Beyond Guild: indented lines, a + sign, an
# upper-case exponent, nan and inf; a carriage return starts the line
# afresh, as on a terminal (progress bars redraw that way).

_SCALAR_NUMBER = (r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
                  r"|nan|inf|infinity)")
_SCALAR_RE = re.compile(
    r"^[ \t]*([^ \t]+):\s+(%s)(?:\s+\((.*)\))?$" % _SCALAR_NUMBER,
    re.IGNORECASE)
_SCALAR_STEP_NOTE_RE = re.compile(r"^(?:step\s+)?(\d+)$")
# Guild AI takes a step note from a `key: value (step N)` anywhere in a
# line, even where the line as a whole is not a scalar.
_SCALAR_STEP_ANYWHERE_RE = re.compile(
    r"[^ \t]+: +[0-9.e\-]+\s+\((?:step\s+)?(\d+)\)$")


def _scalar_line(line):
    """(key, value, step) of an output line; key None where the line is
    not a scalar, step None where it sets none."""
    line = line.rstrip()
    if "\r" in line:
        line = line.rpartition("\r")[2]
    m = _SCALAR_RE.match(line)
    if m is None:
        if line.endswith(")"):
            m = _SCALAR_STEP_ANYWHERE_RE.search(line)
            if m:
                return None, None, int(m.group(1))
        return None, None, None
    key, val, note = m.groups()
    step = None
    if note is not None:
        step_m = _SCALAR_STEP_NOTE_RE.match(note)
        step = int(step_m.group(1)) if step_m else None
    return key, float(val), step


def parse_scalar_line(line):
    """(key, value) if line reads `key: number`, else None."""
    key, val, _step = _scalar_line(line)
    return None if key is None else (key, val)


class _OutputLines:
    """One stream of output split into lines as its bytes arrive. A line
    longer than MAX_SCALAR_LINE is dropped: it cannot be a scalar."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.partial = ""  # the line not ended yet
        self._overlong = False

    def feed(self, data):
        """The lines data ends."""
        lines = (self.partial + self._decoder.decode(data)).split("\n")
        self.partial = lines.pop()
        if self._overlong:  # the rest of a line too long to be a scalar
            self._overlong = bool(not lines)
            lines = lines[1:]
        if len(self.partial) > MAX_SCALAR_LINE:
            self.partial, self._overlong = "", True
        return lines


class _ScalarRecorder:
    """Parses a run's output as it arrives, stdout and the stderr of each
    process in lines of their own (a progress bar drawn on stderr does
    not end up in the middle of a line printed to stdout, nor of one a
    worker process logs); appends scalars to a file, made when the first
    scalar comes. `step: N` anywhere sets the step of the scalars after
    it."""

    def __init__(self, path):
        self._path = path
        self._file = None
        self._streams = {}  # None (stdout) or a pid (its stderr): lines
        self.step = 0

    def feed(self, data, stderr_of=None):
        """Take data, printed to stdout, or to stderr by process
        stderr_of."""
        lines = self._streams.get(stderr_of)
        if lines is None:
            lines = self._streams[stderr_of] = _OutputLines()
        for line in lines.feed(data):
            self._line(line)

    def _line(self, line):
        key, val, step = _scalar_line(line)
        if step is not None:
            self.step = step
        if key is None:
            return
        if key == "step":
            if val == val and abs(val) != float("inf"):
                self.step = int(val)
            return
        if self._file is None:
            try:
                self._file = open(self._path, "a", encoding="utf-8")
            except OSError as e:  # damaged: the output still has them
                log.warning("cannot record scalars in %s: %s", self._path,
                            e.strerror)
                self._file = io.StringIO()
        self._file.write(json.dumps([key, val, self.step, _timestamp()])
                         + "\n")
        self._file.flush()

    def close(self):
        for lines in self._streams.values():
            if lines.partial:
                self._line(lines.partial)
        if self._file is not None:
            self._file.close()


class _StderrSpans:
    """Tells a script's stderr from its stdout in its output file, which
    the script's process writes both to, so that they stay in the order
    written. That process writes its stderr through _TaggedStderr
    (section 11), which notes in the file STDERR_SPANS `PID b` before each
    write and `PID e START END` after it: process PID's write landed at
    bytes START..END. Bytes no span covers are stdout, or written to
    either stream by another process (a subprocess) or by C code.

    feed() takes the output's bytes in order, from byte offset on, each
    piece read from the file before feed() is called. A write whose `b`
    is not among the notes read by one feed() lands after the bytes fed
    so far, so the bytes before that are known once its `e` or the end
    of an earlier write is read. Each byte goes on to
    on_bytes(data, pid) once known to be stdout (pid None) or process
    pid's stderr; close() passes on the rest.
    """

    def __init__(self, run_dir, offset, on_bytes):
        self._path = os.path.join(run_dir, ".guild", STDERR_SPANS)
        try:  # notes from earlier processes (a restart) are past
            self._read_to = os.path.getsize(self._path)
        except OSError:
            self._read_to = 0
        self._notes = b""  # a note not yet ended
        self._pos = offset  # where self._held starts in the output
        self._held = bytearray()
        self._spans = []  # (start, end, pid), sorted
        self._writing = {}  # pid: (the byte its write lands at or after,
        #                          when that write was first seen)
        self._on_bytes = on_bytes

    def feed(self, data):
        fed = self._pos + len(self._held)
        self._held += data
        self._read_notes(fed)
        if self._writing:
            self._forget_dead_writers()
        self._pass_on(min([self._pos + len(self._held)] + [
            lands_after for lands_after, _ in self._writing.values()]))

    def close(self):
        self._read_notes(0)
        self._pass_on(self._pos + len(self._held))

    def _read_notes(self, fed):
        try:
            with open(self._path, "rb") as f:
                f.seek(self._read_to)
                data = f.read()
        except OSError:
            return
        self._read_to += len(data)
        *notes, self._notes = (self._notes + data).split(b"\n")
        for note in notes:
            pid, _, span = note.partition(b" e ")
            if span:
                self._writing.pop(pid, None)
                try:
                    start, end = map(int, span.split())
                except ValueError:
                    continue  # not a note
                self._spans.append((start, end, pid))
            elif note.endswith(b" b"):
                self._writing[note[:-2]] = (fed, time.monotonic())
        self._spans.sort()

    def _forget_dead_writers(self):
        """A process killed in a write never notes its end: after a second,
        a writer no longer running is forgotten."""
        now = time.monotonic()
        for pid, (_, since) in list(self._writing.items()):
            if now - since > 1 and _proc_token(int(pid)) is None:
                del self._writing[pid]

    def _pass_on(self, end):
        while self._pos < end:
            while self._spans and self._spans[0][1] <= self._pos:
                del self._spans[0]
            if self._spans and self._spans[0][0] <= self._pos:
                upto, pid = self._spans[0][1:]
            else:
                upto = self._spans[0][0] if self._spans else end
                pid = None
            size = min(upto, end) - self._pos
            self._on_bytes(bytes(self._held[:size]), pid)
            del self._held[:size]
            self._pos += size


def _event_files(run_dir):
    """The TensorBoard event files a run wrote: paths relative to the run
    directory, with `/`, in name order in each directory. Linked
    directories are not followed, and .guild (guild's own) is skipped."""
    found = []
    for top, dirs, files in os.walk(run_dir):
        rel_top = os.path.relpath(top, run_dir).replace(os.sep, "/")
        if rel_top == ".":
            rel_top = ""
            if ".guild" in dirs:
                dirs.remove(".guild")
        dirs.sort()
        found += [rel_top + "/" + name if rel_top else name
                  for name in sorted(files) if "tfevents" in name]
    return found


def _event_key(rel_path, tag):
    """How a run names the scalar tag of an event file: `tag` for files
    at the run's top, else `DIR#tag` (as Guild AI does)."""
    prefix = rel_path.rpartition("/")[0]
    return "%s#%s" % (prefix, tag) if prefix else tag


def _printed_scalars(run_dir):
    """The scalar records of what a run printed, in order."""
    return list(map(tuple, _printed_scalar_rows(run_dir)))


def _printed_scalar_rows(run_dir):
    """What a run printed as scalar records: [[key, value, step, time]]."""
    return _printed_scalar_lines(run_dir)[0]


def _printed_scalar_lines(run_dir):
    """(records, number of lines that are not records) of what a run
    printed: lines cut short by a crash, or damaged, are left out."""
    try:
        with open(os.path.join(run_dir, ".guild", SCALARS_FILE),
                  encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:  # none yet, or not a file
        return [], 0
    try:  # one parse for the file: ten times faster than one a line
        rows = json.loads("[%s]" % text.strip("\n").replace("\n", ","))
    except (ValueError, TypeError):
        rows = []
        for line in text.splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                rows.append(None)
    good = [row for row in rows if _is_scalar_row(row)]
    return good, len(rows) - len(good)


def _is_scalar_row(row):
    return (isinstance(row, list) and len(row) == 4
            and isinstance(row[0], str) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool)
                for x in row[1:]))


def read_scalars(run_dir):
    """A run's scalar records: [(key, value, step, time)], those it
    printed in order, then those of its TensorBoard event files."""
    records = _printed_scalars(run_dir)
    for rel in _event_files(run_dir):
        try:
            events = _read_event_file(os.path.join(run_dir, rel))[0]
        except OSError:
            continue
        records += [(_event_key(rel, tag), val, step, ts)
                    for tag, val, step, ts in events]
    return records


def _add_scalar(stats, key, val, step, ts):
    s = stats.get(key)
    if s is None:
        stats[key] = {"last": val, "min": val, "max": val, "step": step,
                      "count": 1, "time": ts}
        return
    s["last"], s["step"], s["time"] = val, step, ts
    s["count"] += 1
    if val < s["min"] or s["min"] != s["min"]:
        s["min"] = val
    if val > s["max"] or s["max"] != s["max"]:
        s["max"] = val


def scalar_stats(records):
    """{key: {"last", "min", "max", "step", "count", "time"}} of scalar
    records; step and time are the last value's."""
    stats = {}
    for key, val, step, ts in records:
        _add_scalar(stats, key, val, step, ts)
    return stats


def _num(x):
    """A scalar value as listings show it."""
    return "%.6g" % x


def _merge_stats(stats, key, other):
    """Fold the stats other of key into stats; the later last wins."""
    s = stats.get(key)
    if s is None:
        stats[key] = dict(other)
        return
    if other["time"] >= s["time"]:
        s["last"], s["step"], s["time"] = (other["last"], other["step"],
                                           other["time"])
    s["count"] += other["count"]
    if other["min"] < s["min"] or s["min"] != s["min"]:
        s["min"] = other["min"]
    if other["max"] > s["max"] or s["max"] != s["max"]:
        s["max"] = other["max"]


def _events_stats(events):
    """scalar_stats of event records, by tag; min and max by the
    built-ins (a hundred thousand records are common)."""
    values, lasts = {}, {}
    for tag, val, step, ts in events:
        if tag in values:
            values[tag].append(val)
        else:
            values[tag] = [val]
        lasts[tag] = (val, step, ts)
    stats = {}
    for tag, vals in values.items():
        numbers = [v for v in vals if v == v] or vals  # nan is no min
        last, step, ts = lasts[tag]
        stats[tag] = {"last": last, "min": min(numbers),
                      "max": max(numbers), "step": step,
                      "count": len(vals), "time": ts}
    return stats


def _event_stats(run_dir):
    """({key: stats}, damaged) of a run's event files, read incrementally.

    .guild/EVENTS_INDEX keeps for each file how far it was read and the
    stats so far, so a read costs only what was written since; a file
    that shrank or was replaced is read afresh. damaged lists (file,
    offset) where a file is unreadable from.
    """
    index_path = os.path.join(run_dir, ".guild", EVENTS_INDEX)
    index = _read_json(index_path)
    known = index.get("files") if isinstance(index, dict) and \
        index.get("version") == 1 else None
    known = known if isinstance(known, dict) else {}
    entries, changed = {}, False
    for rel in _event_files(run_dir):
        path = os.path.join(run_dir, rel)
        try:
            st = os.stat(path)
        except OSError:
            continue
        entry = known.get(rel)
        try:
            fresh = (entry["ino"] != st.st_ino
                     or st.st_size < entry["offset"]
                     or not isinstance(entry["stats"], dict))
        except (KeyError, TypeError):  # not an entry this code wrote
            fresh = True
        if fresh:
            entry = {"ino": st.st_ino, "offset": 0, "damaged": None,
                     "stats": {}}
        if entry["damaged"] is None and st.st_size > entry["offset"]:
            try:
                events, offset, damaged = _read_event_file(
                    path, entry["offset"])
            except OSError:
                events, offset, damaged = [], entry["offset"], None
            for tag, tag_stats in _events_stats(events).items():
                _merge_stats(entry["stats"], tag, tag_stats)
            changed = changed or offset != entry["offset"] or damaged
            entry["offset"], entry["damaged"] = offset, damaged
        changed = changed or fresh
        entries[rel] = entry
    if changed or len(entries) != len(known):
        try:
            _write_json(index_path, {"version": 1, "files": entries})
        except OSError:
            pass  # a read-only store: read it all next time
    stats, damaged = {}, []
    for rel, entry in entries.items():
        for tag, tag_stats in entry["stats"].items():
            _merge_stats(stats, _event_key(rel, tag), tag_stats)
        if entry["damaged"] is not None:
            damaged.append((rel, entry["damaged"]))
    return stats, damaged


def _run_scalar_stats(run_dir):
    """({key: stats}, damaged) of what a run printed and logged to
    TensorBoard event files (see _event_stats)."""
    stats, damaged = _event_stats(run_dir)
    for key, printed in scalar_stats(_printed_scalars(run_dir)).items():
        _merge_stats(stats, key, printed)
    return stats, damaged


def _last_scalars(run_dir):
    return {k: s["last"] for k, s in _run_scalar_stats(run_dir)[0].items()}


# ---------------------------------------------------------------------------
## 9. The run store: indexes, the listing cache, filters, the trash
# ---------------------------------------------------------------------------
#
# The run directories are the truth. Everything under GUILD_HOME/cache can
# be deleted and is rebuilt from them:
#
#   cache/index/staged/<created>-<id>   one entry per staged run, so a queue
#                                       claims the oldest without a scan
#   cache/index/claims/<created>-<id>   runs claimed but not yet started
#   cache/index/running/<id>            runs whose process is running
#   cache/runs.json                     what listings need, one read for all
#
# Index entries are written before the run state they announce, so a crash
# leaves an extra entry (dropped when found stale), never a missing one.

INDEX_VERSION = "1"
_GUILD_SUBDIR = os.sep + ".guild"
_RACY_NS = 2 * 10 ** 9  # mtimes this close to a read are not trusted
_ORPHAN_ENTRY_US = 60 * 10 ** 6  # age at which an entry with no run is junk


def _home_for_runs_dir(runs_dir):
    return os.path.dirname(os.path.abspath(runs_dir))


def _index_dir(kind, home=None):
    return os.path.join(home or _guild_home(), "cache", "index", kind)


def _index_name(run_id, created):
    return "%020d-%s" % (created or 0, run_id)


def _index_put(kind, name, data, home=None):
    _write_cache_json(os.path.join(_index_dir(kind, home), name), data)


def _index_move(kind, name, to_kind, to_name=None, keep=False):
    """Move (with keep, link) an index entry to another kind, in one
    rename; an entry that is missing is made anew. Cheaper than writing
    a new file, and never leaves the run in neither kind."""
    src = os.path.join(_index_dir(kind), name)
    dest = os.path.join(_index_dir(to_kind), to_name or name)
    for _ in range(2):  # again once its directory is made
        try:
            if keep:
                os.link(src, dest)
            else:
                os.replace(src, dest)
            return
        except FileExistsError:
            return
        except FileNotFoundError:
            if not os.path.exists(src):
                break
            _ensure_cache_dir(os.path.dirname(dest))
        except OSError:  # no hard links here, or damage (healed below)
            break
    _write_cache_json(dest, {})


def _index_drop(kind, name, home=None):
    _remove_path(os.path.join(_index_dir(kind, home), name),
                 home or _guild_home())


def _index_names(kind, home=None):
    """The entries of an index; what is not an entry (a directory, or a
    file where the index directory should be) is moved aside."""
    path = _index_dir(kind, home)
    names = []
    try:
        with os.scandir(path) as scan:
            for entry in scan:
                if entry.is_dir():
                    _move_aside(entry.path, home or _guild_home())
                elif not entry.name.endswith(".tmp"):
                    names.append(entry.name)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        _make_cache_way(path, is_dir=True)
        return []
    return sorted(names)


def _index_run_id(name):
    run_id = name.rpartition("-")[2]
    return run_id if len(run_id) == RUN_ID_LEN else None


def _index_created(name):
    head = name.partition("-")[0]
    return int(head) if head.isdigit() else 0


def _claim_staged(run):
    """Claim a staged run for this process; call under the status lock.

    Returns the status the run had; the claim is made only if staged.
    The claim does not rest on the lock alone, which some cluster
    filesystems (Lustre with localflock, BeeGFS) hold per machine: the
    PENDING file is created only if absent, and the run is checked to be
    still unstarted once it is ours.
    """
    status = run.status
    if status != "staged":
        return status
    claim = run.guild_path(PENDING_CLAIM)
    old = _read_json(claim)
    if old is not None and not _owner_alive(old, claim):
        _remove(claim)  # a dead process's claim
    if not _write_json_new(claim, _process_owner()):
        return "pending"  # another machine's queue claimed it first
    if os.path.exists(run.guild_path(PROC_ATTRS)) or not os.path.exists(
            run.guild_path(STAGED_MARKER)):  # started while we looked
        _remove(claim)
        return run.status
    _index_move("staged", _index_name(run.id, run.get("created")),
                "claims")
    return status


def _record_start(run, record):
    """Record the process running a run: from here it is running, or if
    that process dies, error; never staged again. A batch or a queue is
    recorded by its own process; a script's process records itself, as
    the script starts (_record_script_start)."""
    _write_json(run.guild_path(PROC_ATTRS), record)
    _mark_started(run)


def _mark_started(run):
    """Drop a run's staged state once its process record is written."""
    _remove(run.guild_path(STAGED_MARKER))
    _remove(run.guild_path(PENDING_CLAIM))
    name = _index_name(run.id, run.get("created"))
    _index_drop("staged", name)
    _index_drop("claims", name)


def _restage_in_place(run, reason):
    """Stage an interrupted run again, in its own directory (checkpoints
    and output stay); call under the status lock, once its process has
    ended. The attempt's process and exit records move to
    .guild/attempts/<n>.json, where `runs info` shows them. Until the
    last step the run reads as it ended, so a crash loses nothing."""
    attempt = len(_run_attempts(run)) + 1
    _ensure_dir(run.guild_path(ATTEMPTS_DIR))
    _write_json(run.guild_path(ATTEMPTS_DIR, "%d.json" % attempt), {
        "reason": reason, "status": run.status,
        "proc": _read_json(run.guild_path(PROC_ATTRS)),
        "exit": _read_json(run.guild_path(EXIT_ATTRS))})
    with open(run.guild_path(STAGED_MARKER), "a"):
        pass
    _index_put("staged", _index_name(run.id, run.get("created")), {})
    _remove(run.guild_path(PROC_ATTRS))  # exit.json still says how it ended
    _remove(run.guild_path(EXIT_ATTRS))
    log.info("Run %s is staged again (%s; attempt %d interrupted)",
             run.id, reason, attempt)


def _restage_dead_claims():
    """Put runs whose claimer died back in the staged index.

    Call under the status lock. A run that started before its claimer
    died is not staged again: it ends error, or completes on its own.
    """
    for name in _index_names("claims"):
        run_id = _index_run_id(name)
        run_dir = os.path.join(_runs_dir(), run_id or "-")
        if not run_id or not os.path.exists(
                os.path.join(run_dir, ".guild", RUN_ATTRS)):
            _index_drop("claims", name)
            continue
        status = run_status(run_dir)
        if status == "staged":
            _remove(os.path.join(run_dir, ".guild", PENDING_CLAIM))
            _index_move("claims", name, "staged")
            log.info("Run %s was claimed by a process that died; it is "
                     "staged again", run_id)
        elif status != "pending":
            _index_drop("claims", name)


def _ensure_index():
    """Build the index from the run directories if it is missing."""
    marker = os.path.join(_guild_home(), "cache", "index", "version")
    if _read_json(marker) == INDEX_VERSION:
        return
    _reconcile_index()
    _write_cache_json(marker, INDEX_VERSION)


def _reconcile_index():
    """Make the index agree with the run directories; under the lock.

    Adds what is missing and drops what is stale. An entry for a run
    directory still being created (no run.json yet) is left alone.
    """
    want = {"staged": set(), "claims": set(), "running": set()}
    runs_dir = _runs_dir()
    try:
        names = os.listdir(runs_dir)
    except FileNotFoundError:
        names = []
    created = {}
    for run_id in names:
        run_dir = os.path.join(runs_dir, run_id)
        attrs = _read_record(os.path.join(run_dir, ".guild", RUN_ATTRS))[0]
        if attrs is None:
            continue
        status = run_status(run_dir)
        created[run_id] = attrs.get("created")
        name = _index_name(run_id, attrs.get("created"))
        if status == "staged":
            want["staged"].add(name)
        elif status == "pending" and os.path.exists(
                os.path.join(run_dir, ".guild", STAGED_MARKER)):
            want["claims"].add(name)
        elif status == "running":
            want["running"].add(run_id)
    for kind, names_wanted in want.items():
        have = set(_index_names(kind))
        for name in names_wanted - have:
            _index_put(kind, name, {})
        for name in have - names_wanted:
            run_id = name if kind == "running" else _index_run_id(name)
            if run_id in created or (
                    _timestamp() - _index_created(name) > _ORPHAN_ENTRY_US):
                _index_drop(kind, name)


def _other_runs_running():
    """True if a run other than a queue, or a batch that stages its trials
    for queues (tpe waits on them), is running (from the index)."""
    for name in _index_names("running"):
        run = Run(name, os.path.join(_runs_dir(), name))
        attrs = _read_record(run.guild_path(RUN_ATTRS))[0]
        status = None if attrs is None else run.status
        if status == "running":
            kind = _field(attrs, "op", dict).get("kind")
            if kind != "queue" and not (kind == "batch" and
                                        attrs.get("stage_trials")):
                return True
        elif status not in ("pending", "staged"):  # those may yet start
            _index_drop("running", name)
    return False


_SUMMARY_FIELDS = ("id", "op", "kind", "label", "created", "started",
                   "stopped", "exit_status", "batch", "status", "mtime",
                   "seen", "flags", "scalars", "step", "tags", "comments",
                   "marked")
_SUMMARY_CACHE_VERSION = 5


def _run_summary(run_id, run_dir, mtime, now):
    """What listings need of one run, read from its directory; None for a
    directory that is not a run (yet). A run with damaged metadata is
    summarized from what can be read (its operation `?` if unknown)."""
    gdir = os.path.join(run_dir, ".guild")
    attrs, problem = _read_record(os.path.join(gdir, RUN_ATTRS))
    if attrs is None and problem is None and _remove_unborn(run_dir):
        return None
    attrs = attrs or {}
    proc = _read_dict(os.path.join(gdir, PROC_ATTRS))
    exit_attrs = _read_dict(os.path.join(gdir, EXIT_ATTRS))
    return {
        "id": run_id, "op": _op_desc(attrs),
        "kind": _field(_field(attrs, "op", dict), "kind", str),
        "label": attrs.get("label") or "", "created": attrs.get("created"),
        "started": proc.get("started"), "stopped": exit_attrs.get("stopped"),
        "exit_status": exit_attrs.get("exit_status"),
        "batch": attrs.get("batch"), "status": run_status(run_dir),
        "mtime": mtime, "seen": now, "flags": attrs.get("flags") or {},
        "tags": attrs.get("tags") or [],
        "comments": [c.get("body", "") for c in attrs.get("comments") or ()],
        "marked": bool(attrs.get("marked")),
        **_scalar_summary(run_dir),
    }


def _scalar_summary(run_dir):
    """The last value of each scalar, and the step of the latest one."""
    stats = _run_scalar_stats(run_dir)[0]
    latest = max(stats.values(), key=lambda st: st["time"] or 0,
                 default=None)
    return {"scalars": {k: st["last"] for k, st in stats.items()},
            "step": latest["step"] if latest else None}




def _remove_unborn(run_dir):
    """True if run_dir, which has no run.json, is not a run: one being
    created (its creator alive), or one whose creator died before making
    it a run, which is removed. A directory with signs that a run ran in
    it (a process, exit or output file) is a run that lost its run.json."""
    gdir = os.path.join(run_dir, ".guild")
    if any(os.path.lexists(os.path.join(gdir, name))
           for name in (PROC_ATTRS, EXIT_ATTRS, OUTPUT_FILE)):
        return False
    for name in (PENDING_CLAIM, STAGED_MARKER):
        path = os.path.join(gdir, name)
        creator = _read_json(path)
        if isinstance(creator, dict):
            if _owner_alive(creator, path):
                return True
            break
    else:  # no creator named (yet, or a creator killed at once): by age
        try:
            age = time.time() - os.stat(gdir).st_mtime
        except OSError:
            return True
        if age * 10 ** 6 < _ORPHAN_ENTRY_US:
            return True
    if not os.path.lexists(os.path.join(gdir, RUN_ATTRS)):
        shutil.rmtree(run_dir, ignore_errors=True)
    return True


# The type of each field of a listing cache row, by _SUMMARY_FIELDS; a
# row that does not fit (a damaged or hand-edited cache) is read afresh.
_SUMMARY_TYPES = (str, str, (str, type(None)), str, (int, type(None)),
                  (int, type(None)), (int, type(None)), (int, type(None)),
                  (str, type(None)), str, int, int, dict, dict)


def _load_summary_cache(cache_path):
    try:
        st = os.stat(cache_path)
    except OSError:
        return {}
    signature = (st.st_mtime_ns, st.st_size, st.st_ino)
    parsed = _STATE.parsed_summaries.get(cache_path)
    if parsed is not None and parsed[0] == signature:
        return dict(parsed[1])
    cached = _read_json(cache_path)
    if not isinstance(cached, dict) or cached.get(
            "version") != _SUMMARY_CACHE_VERSION or not isinstance(
                cached.get("rows"), list):
        return {}
    entries = {row[0]: dict(zip(_SUMMARY_FIELDS, row))
               for row in cached["rows"]
               if isinstance(row, list) and len(row) == len(_SUMMARY_TYPES)
               and all(map(isinstance, row, _SUMMARY_TYPES))}
    _STATE.parsed_summaries[cache_path] = (signature, entries)
    return dict(entries)


def run_summaries(runs_dir=None):
    """Summaries (dicts) of all runs, newest first, via the listing cache.

    Every run directory is listed and its .guild directory's mtime checked
    against the cache, so the cache can never hide a run or show a stale
    state; running and pending states, which depend on live processes,
    are derived afresh each time.
    """
    runs_dir = os.path.abspath(runs_dir or _runs_dir())
    cache_path = os.path.join(_home_for_runs_dir(runs_dir), "cache",
                              "runs.json")
    entries = _load_summary_cache(cache_path)
    now = time.time_ns()
    summaries, dirty = [], False
    try:
        scan = os.scandir(runs_dir)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise GuildError("cannot read runs in '%s': %s"
                         % (runs_dir, e.strerror))
    with scan:
        for entry in scan:
            try:
                mtime = os.stat(entry.path + _GUILD_SUBDIR).st_mtime_ns
            except OSError:
                continue
            summary = entries.get(entry.name)
            if (summary is None or summary["mtime"] != mtime
                    or summary["seen"] - mtime < _RACY_NS):
                summary = _run_summary(entry.name, entry.path, mtime, now)
                if summary is None:
                    continue
                # Saving pays only for summaries the next read will trust.
                dirty = dirty or now - mtime >= _RACY_NS
            elif summary["status"] in ("running", "pending"):
                summary["status"] = run_status(entry.path)
                summary.update(_scalar_summary(entry.path))
            summaries.append(summary)
    if dirty or len(summaries) != len(entries):
        try:
            _write_cache_json(cache_path, {
                "version": _SUMMARY_CACHE_VERSION, "fields": _SUMMARY_FIELDS,
                "rows": [[x[f] for f in _SUMMARY_FIELDS]
                         for x in summaries]})
        except (OSError, GuildError):
            pass  # a read-only store still lists
    summaries.sort(key=lambda x: (x["started"] or x["created"] or 0,
                                  x["id"]), reverse=True)
    return summaries


def list_runs(runs_dir=None):
    """All runs in the store, newest first (by start, else creation)."""
    runs_dir = os.path.abspath(runs_dir or _runs_dir())
    return _runs_of(run_summaries(runs_dir), runs_dir)


def _runs_of(summaries, runs_dir):
    """The Run of each summary, in order."""
    return [Run(x["id"], runs_dir + os.sep + x["id"]) for x in summaries]


class RunFilter:
    """Which runs a command applies to, in Guild AI's filter words.

    operation, label and comment match substrings (label `-` is
    unlabeled); statuses is a set of status names; started is a range
    such as `today`, `last 2 hours`, `after 2026-11-01`; batch is a batch
    run id (its trials); tags match runs with any of them; marked is
    True (marked runs), False (unmarked) or None.
    """

    def __init__(self, operation=None, label=None, unlabeled=False,
                 statuses=(), started=None, batch=None, tags=(),
                 comment=None, marked=None):
        self.operation = operation
        self.label = None if label == "-" else label
        self.unlabeled = unlabeled or label == "-"
        self.statuses = set(statuses)
        self.started = parse_time_range(started) if started else None
        self.batch = batch
        self.tags = set(tags or ())
        self.comment = comment
        self.marked = marked

    def matches(self, x):
        """True if summary x passes every filter."""
        if self.operation and self.operation not in x["op"]:
            return False
        if self.label and self.label not in x["label"]:
            return False
        if self.unlabeled and x["label"] not in (
                "", _default_label(x.get("flags") or {},
                                   x.get("tags") or ())):
            return False
        if self.statuses and x["status"] not in self.statuses:
            return False
        if self.batch and x.get("batch") != self.batch:
            return False
        if self.tags and not self.tags.intersection(x.get("tags") or ()):
            return False
        if self.comment and not any(self.comment.lower() in c.lower()
                                    for c in x.get("comments") or ()):
            return False
        if self.marked is not None and bool(x.get("marked")) != \
                self.marked:
            return False
        if self.started:
            ts = x["started"] or x["created"] or 0
            low, high = self.started
            if (low is not None and ts < low) or (
                    high is not None and ts >= high):
                return False
        return True


_TIME_UNITS = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800}


def parse_time_range(spec, now=None):
    """(low, high) in microseconds, either None, for a --started RANGE:
    `today`, `yesterday`, `last N minutes|hours|days|weeks`,
    `after DATE`, `before DATE`, `between DATE and DATE`, or a day
    `2026-11-21`. DATE is `YYYY-MM-DD[ HH:MM[:SS]]` or `HH:MM` (today)."""
    now = time.time() if now is None else now
    text = " ".join(spec.lower().split())
    midnight = time.mktime(time.localtime(now)[:3] + (0, 0, 0, 0, 0, -1))
    m = re.match(r"^last (\d+) (minute|hour|day|week)s?$", text)
    if text == "today":
        low, high = midnight, None
    elif text == "yesterday":
        low, high = midnight - 86400, midnight
    elif m:
        low, high = now - int(m.group(1)) * _TIME_UNITS[m.group(2)], None
    elif text.startswith("after "):
        low, high = _parse_when(text[6:], midnight, spec), None
    elif text.startswith("before "):
        low, high = None, _parse_when(text[7:], midnight, spec)
    elif text.startswith("between ") and " and " in text:
        a, _, b = text[8:].partition(" and ")
        low, high = _parse_when(a, midnight, spec), _parse_when(
            b, midnight, spec)
    else:
        low = _parse_when(text, midnight, spec)
        high = low + 86400
    return (None if low is None else int(low * 1e6),
            None if high is None else int(high * 1e6))


def _parse_when(text, midnight, spec):
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            return time.mktime(time.strptime(text, fmt)[:8] + (-1,))
        except ValueError:
            pass
    m = re.match(r"^(\d{1,2}):(\d\d)$", text)
    if m:
        return midnight + int(m.group(1)) * 3600 + int(m.group(2)) * 60
    raise UsageError(
        "invalid time range '%s': use today, yesterday, 'last 2 hours', "
        "'after 2026-11-01', 'before 2026-11-01 12:00', 'between 9:00 "
        "and 12:00' or a day such as 2026-11-21" % spec)


def _trash_runs_dir():
    return os.path.join(_guild_home(), "trash", "runs")


def _move_run(run, dest_dir):
    """Move a run directory into dest_dir (the trash, or back)."""
    _ensure_dir(dest_dir)
    dest = os.path.join(dest_dir, run.id)
    if os.path.exists(dest):
        raise RunError("cannot move run %s: '%s' exists" % (run.id, dest))
    os.rename(run.dir, dest)
    return Run(run.id, dest)


def _run_for_dir(run_dir):
    run_dir = os.path.abspath(run_dir)
    if not os.path.isfile(os.path.join(run_dir, ".guild", RUN_ATTRS)):
        raise RunError("'%s' is not a run directory" % run_dir)
    return Run(os.path.basename(run_dir), run_dir)


_INDEX_RANGE_RE = re.compile(r"^(\d*):(\d*)$")


def select_runs(specs, runs):
    """Select runs by listing index (1 is newest), index range (`1:3` is
    the three newest, `:5`, `2:`, `:` every run), id or id prefix."""
    selected = []
    for spec in specs:
        in_range = _select_range(spec, runs)
        for run in [_select_one(spec, runs)] if in_range is None \
                else in_range:
            if run not in selected:
                selected.append(run)
    return selected


def _select_range(spec, runs):
    """The runs an index range START:END selects (both ends included,
    either may be left out); None if spec is not a range."""
    m = _INDEX_RANGE_RE.match(spec)
    if not m:
        return None
    start = int(m.group(1) or 1)
    end = int(m.group(2) or len(runs))
    if start < 1:
        raise RunError("invalid range '%s': indexes start at 1" % spec)
    return runs[start - 1:end]


def _select_one(spec, runs):
    """The one run spec (an index, a range of one, an id or prefix, or
    a run directory) selects."""
    in_range = _select_range(spec, runs)
    if in_range is not None and len(in_range) != 1:
        raise RunError("'%s' matches %d runs: give one run" % (
            spec, len(in_range)))
    if in_range:
        return in_range[0]
    if spec.isdigit() and 1 <= int(spec) <= len(runs):
        return runs[int(spec) - 1]
    if os.path.sep in spec or (IS_WINDOWS and "/" in spec):
        return _run_for_dir(spec)
    matches = [run for run in runs if run.id.startswith(spec)]
    if not matches:
        raise RunError("could not find a run matching '%s'\n"
                       "Try 'guild runs list' for a list." % spec)
    if len(matches) > 1:
        raise RunError("'%s' matches %d runs: %s - use more characters"
                       % (spec, len(matches),
                          ", ".join(r.short_id for r in matches[:5])))
    return matches[0]


# ---------------------------------------------------------------------------
## 10. Creating runs: operations, flags, the source snapshot
# ---------------------------------------------------------------------------


def _resolve_op(opspec, cwd):
    """Return the op dict for opspec in project dir cwd."""
    if opspec == "queue":
        return {"kind": "queue", "name": "queue"}
    script = os.path.join(cwd, opspec)
    if not opspec.endswith(".py") or not os.path.isfile(script):
        if opspec.endswith(".py"):
            raise OpError("cannot find script '%s'" % opspec)
        raise OpError("cannot find operation '%s'\nguild.py runs Python "
                      "scripts (NAME.py) and 'queue'" % opspec)
    project = os.path.abspath(cwd)
    rel = os.path.relpath(os.path.abspath(script), project)
    if rel.startswith(os.pardir):
        project, rel = os.path.dirname(os.path.abspath(script)), \
            os.path.basename(script)
    mode, flagdefs = _script_flagdefs(script)
    return {"kind": "script", "name": opspec, "script": rel.replace(
        os.path.sep, "/"), "project": project, "flags_mode": mode,
        "flagdefs": flagdefs}


def _op_flagdefs(op):
    if op["kind"] == "queue":
        return QUEUE_FLAGDEFS
    return op.get("flagdefs") or {}


def _resolve_flags(op, raw_flags, force=False):
    """Flag values for op: defaults updated by raw NAME=VALUE strings."""
    flags = {name: fd.get("default")
             for name, fd in _op_flagdefs(op).items()}
    flags.update(_given_flags(op, raw_flags, force))
    return flags


def _given_flags(op, raw_flags, force=False):
    """Decode raw NAME=VALUE strings for op, checking the names."""
    flagdefs = _op_flagdefs(op)
    if op["kind"] == "queue" and "wait-for-running" in raw_flags:
        raw_flags = _queue_wait_flag(raw_flags)
    for name in raw_flags:
        if name not in flagdefs and not force:
            raise FlagError(
                "unsupported flag '%s'\nTry 'guild run %s --help-op' for a "
                "list of flags or use --force-flags to skip this check."
                % (name, op["name"]))
    return {name: _coerce_flag_val(name, raw, flagdefs.get(name))
            for name, raw in raw_flags.items()}


def _check_required(op, flag_vals, rows):
    """Refuse a run missing a flag the script requires (argparse's or
    click's required=True): the script would only fail on it."""
    for name, fd in sorted(_op_flagdefs(op).items()):
        if fd.get("required") and (flag_vals.get(name) is None and not rows
                                   or any(row.get(name, flag_vals.get(name))
                                          is None for row in rows)):
            raise FlagError(
                "missing required flag '%s' (the script's option %s)\n"
                "Give it as %s=VALUE; 'guild run %s --help-op' lists the "
                "flags." % (name, fd.get("arg", "--" + name), name,
                            op["name"]))


def _queue_wait_flag(raw_flags):
    """raw_flags with Guild AI 0.7+'s queue flag wait-for-running made
    its inverse, ignore-running (the flag queues record and print)."""
    raw_flags = dict(raw_flags)
    wait = _coerce_flag_val("wait-for-running",
                            raw_flags.pop("wait-for-running"),
                            {"type": "boolean"})
    ignore = encode_flag_val(not wait)
    if raw_flags.get("ignore-running", ignore) != ignore and \
            _coerce_flag_val("ignore-running", raw_flags["ignore-running"],
                             {"type": "boolean"}) == wait:
        raise FlagError("wait-for-running and ignore-running disagree: "
                        "give one of them")
    raw_flags["ignore-running"] = ignore
    return raw_flags


def _coerce_value(name, val, flagdef):
    """Type a value read from a batch file (JSON) like a typed flag."""
    if isinstance(val, str):
        _check_text(name, val)
        if (flagdef or {}).get("type") in ("int", "float", "boolean"):
            return _coerce_one(name, val, flagdef)
        return val
    if val is not None and not isinstance(val, (bool, int, float)):
        raise FlagError("invalid value for %s: expected a number, text, "
                        "yes/no or null" % name)
    return _coerce_one(name, encode_flag_val(val), flagdef)


def _read_batch_files(paths, op, force, cwd):
    """The trials listed in batch files (.csv with a header, .json)."""
    rows = []
    flagdefs = _op_flagdefs(op)
    for rel in paths:
        full = os.path.join(cwd, rel)
        ext = os.path.splitext(rel)[1].lower()
        if ext not in (".csv", ".json"):
            raise FlagError("unsupported batch file '%s': use .csv or .json"
                            % rel)
        if not os.path.isfile(full):
            raise FlagError("batch file '%s' does not exist" % rel)
        try:
            items = _csv_items(full) if ext == ".csv" else _json_items(full)
        except (OSError, ValueError, csv.Error) as e:
            raise FlagError("cannot read batch file '%s': %s" % (rel, e))
        except FlagError as e:
            raise FlagError("batch file '%s', %s" % (rel, e))
        if not items:
            raise FlagError("batch file '%s' lists no trials" % rel)
        for row_no, item in items:
            try:
                row = {}
                for name, val in item.items():
                    if not _FLAG_NAME_RE.match(name):
                        raise FlagError("invalid flag name %r" % name)
                    if name not in flagdefs and not force:
                        raise FlagError("unsupported flag '%s'" % name)
                    row[name] = _coerce_value(name, val, flagdefs.get(name))
            except FlagError as e:
                raise FlagError("batch file '%s', row %d: %s"
                                % (rel, row_no, e))
            rows.append(row)
    return rows


def _csv_items(path):
    """[(row number, {name: value})] of a CSV file whose header names
    the flags; row 1 is the first line after the header."""
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    header = [h.strip() for h in lines[0]] if lines else []
    if not header or not all(header):
        raise FlagError("header: the first line must name the flags")
    items = []
    for row_no, cells in enumerate(lines[1:], 1):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise FlagError("row %d: %d values for %d flags"
                            % (row_no, len(cells), len(header)))
        item = {}
        for name, cell in zip(header, cells):
            if cell.strip():
                val = decode_flag_val(cell)
                if isinstance(val, (list, dict)):
                    raise FlagError("row %d: '%s' is not a single value"
                                    % (row_no, cell))
                item[name] = cell.strip() if isinstance(val, str) else val
        items.append((row_no, item))
    return items


def _json_items(path):
    """[(row number, {name: value})] of a JSON list of objects."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise FlagError("expected a list of objects")
    for row_no, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise FlagError("row %d: expected an object of flag values"
                            % row_no)
    return list(enumerate(data, 1))


# The source snapshot: the script being run and the project modules it
# imports are always copied; then, up to the count limit, the project's
# files that match an include pattern, then its other text files, each in
# walk order, none matching an exclude pattern or over the size limit.
# Files left out are named in the run's metadata and a warning.

def _source_settings(project):
    """The snapshot's settings for project: include and exclude patterns,
    max-count and max-size; from guild.ini's [sourcecode] section, the
    limits overridden by Guild AI's variables for one command."""
    settings = {"include": [], "exclude": [], "max-count": MAX_SOURCE_FILES,
                "max-size": MAX_SOURCE_FILE_SIZE}
    config_path = os.path.join(project, SOURCE_CONFIG)
    if os.path.isfile(config_path):
        import configparser  # only for a project that has the file
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(config_path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as e:
            raise OpError("cannot read %s: %s" % (
                config_path, str(e).splitlines()[0]))
        section = parser["sourcecode"] if parser.has_section(
            "sourcecode") else {}
        for key, text in section.items():
            if key not in settings:
                raise OpError("%s: unknown setting '%s' in [sourcecode] "
                              "(settings: %s)" % (config_path, key,
                                                  ", ".join(settings)))
            settings[key] = text.split() if key in ("include", "exclude") \
                else _source_limit(text, "%s: %s" % (config_path, key))
    for key, var in SOURCE_LIMIT_ENV.items():
        if os.environ.get(var):
            settings[key] = _source_limit(os.environ[var], var)
    return settings


def _source_limit(text, where):
    """A count or a size: digits, a size with K, M or G (1024-based)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise OpError("%s must be a whole number (a size may end in K, M "
                      "or G), not '%s'" % (where, text))
    return int(m.group(1)) * 1024 ** " kmg".index(
        (m.group(2) or " ").lower())


def _source_pattern_hit(rel, patterns, is_dir=False):
    """True if a pattern matches rel (a path under the project, / as its
    separator) or one of its directories. A pattern holding / matches a
    path from the project's top, any other a name at any depth; `*` also
    matches /; a pattern ending in / matches directories only."""
    from fnmatch import fnmatchcase
    parts = rel.split("/")
    for i, name in enumerate(parts):
        dir_part = is_dir or i < len(parts) - 1
        for pattern in patterns:
            if pattern.endswith("/") and not dir_part:
                continue
            pattern = pattern.strip("/")
            if fnmatchcase("/".join(parts[:i + 1]), pattern) \
                    if "/" in pattern else fnmatchcase(name, pattern):
                return True
    return False


def _script_modules(project, script):
    """The script (relative to project) and the modules it imports from
    the project, transitively, as paths relative to project: each found
    by scanning import statements, resolved as Python would from the
    script's directory (relative imports from the module's package)."""
    project = os.path.abspath(project)
    script_path = os.path.join(project, script)
    top = os.path.dirname(script_path)
    found, todo = [script_path], [script_path]
    while todo:
        path = todo.pop(0)
        if not path.endswith(".py"):
            continue
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                source = f.read().replace("\\\n", " ")
        except OSError:
            continue
        for module, level, names in _imports(source):
            if level:
                if path == script_path:
                    continue  # __main__ has no package
                base = path
                for _ in range(level):
                    base = os.path.dirname(base)
            else:
                base = top
            for dotted in [module] + ["%s.%s" % (module, n) if module
                                      else n for n in names]:
                for f in _module_files(base, dotted):
                    if f not in found and os.path.realpath(f) != \
                            os.path.realpath(_THIS_FILE) and \
                            not os.path.relpath(f, project).startswith(
                                os.pardir):
                        found.append(f)
                        todo.append(f)
    return [os.path.relpath(f, project).replace(os.path.sep, "/")
            for f in found]


def _imports(source):
    """(module, level, names) for each import in Python source: `from
    ..a import b, c` is ("a", 2, ["b", "c"]), `import a.b` ("a.b", 0,
    [])."""
    for m in _IMPORT_RE.finditer(source):
        from_module, from_names, modules, literal = m.groups()
        if literal:
            yield literal, 0, []
        elif modules is not None:
            for item in modules.split(","):
                name = item.split()[0] if item.split() else ""
                if name:
                    yield name, 0, []
        else:
            dotted = from_module.lstrip(".")
            names = [item.split()[0] for item in
                     from_names.strip("()").split(",")
                     if item.split() and item.split()[0] != "*"]
            yield dotted, len(from_module) - len(dotted), names


def _module_files(base, dotted):
    """The files under directory base that importing dotted loads: each
    package's __init__.py and the module's file, where they exist."""
    import importlib.machinery
    files = []
    here = base
    for part in dotted.split(".") if dotted else ():
        if not part.isidentifier():
            break
        pkg = os.path.join(here, part)
        init = os.path.join(pkg, "__init__.py")
        if os.path.isfile(init):
            files.append(init)
        else:
            modules = [pkg + suffix for suffix in
                       [".py"] + importlib.machinery.EXTENSION_SUFFIXES
                       if os.path.isfile(pkg + suffix)]
            if modules:
                files.append(modules[0])
                break
            if not os.path.isdir(pkg):  # not a namespace package either
                break
        here = pkg
    return files


def _source_snapshot(project, script=None, skip_dirs=()):
    """(files, left_out) of the project's source snapshot: relative paths
    to copy (script and the modules it imports first), and a record of
    the files left out ({count, reasons: {reason: count}, max_count,
    max_size, files: [[path, reason]]}, None if none; reason is size,
    binary or count). Never this file: guild.py copied into a
    project is the tool, not its source."""
    settings = _source_settings(project)
    files = _script_modules(project, script) if script else []
    required = set(files)
    included, text_files, left_out = [], [], []
    for rel, path in _project_files(project, skip_dirs, settings["exclude"]):
        if rel in required:
            continue
        try:
            if os.path.getsize(path) > settings["max-size"]:
                left_out.append((rel, "size"))
            elif _source_pattern_hit(rel, settings["include"]):
                included.append(rel)
            elif _is_text_file(path):
                text_files.append(rel)
            else:
                left_out.append((rel, "binary"))
        except OSError:  # gone, or unreadable: not source
            continue
    room = max(settings["max-count"] - len(files), 0)
    candidates = included + text_files  # what the user asked for first
    files += candidates[:room]
    left_out += [(rel, "count") for rel in candidates[room:]]
    if not left_out:
        return files, None
    left_out.sort(key=lambda item: SOURCE_LEFT_OUT_REASONS.index(item[1]))
    reasons = [reason for _rel, reason in left_out]
    return files, {"count": len(left_out),
                   "reasons": {r: reasons.count(r) for r in
                               SOURCE_LEFT_OUT_REASONS if r in reasons},
                   "max_count": settings["max-count"],
                   "max_size": settings["max-size"],
                   "files": [list(x) for x in
                             left_out[:MAX_LEFT_OUT_RECORDED]]}


def _is_text_file(path):
    """True if the file's first KiB holds no NUL byte (as Guild AI
    tells text files)."""
    with open(path, "rb") as f:
        return b"\0" not in f.read(1024)


def _project_files(project, skip_dirs, exclude):
    """(relative path, path) of the project's files a snapshot may copy,
    in a stable order: not in hidden directories, __pycache__, virtual
    environments, skip_dirs, directories holding a `.guild-nocopy` file
    (as in Guild AI) or matching an exclude pattern; not hidden files,
    bytecode, files matching an exclude pattern, or this file."""
    skip_real = {os.path.realpath(d) for d in skip_dirs}
    own_name = os.path.basename(_THIS_FILE)
    for root, dirs, names in os.walk(project):
        rel_root = os.path.relpath(root, project).replace(os.path.sep, "/")
        prefix = "" if rel_root == "." else rel_root + "/"
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and d not in _SOURCE_SKIP_DIRS
            and not os.path.exists(os.path.join(root, d, "pyvenv.cfg"))
            and not os.path.exists(os.path.join(root, d, ".guild-nocopy"))
            and not (exclude and _source_pattern_hit(prefix + d, exclude,
                                                     is_dir=True))
            and os.path.realpath(os.path.join(root, d)) not in skip_real)
        for name in sorted(names):
            if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(root, name)
            if name == own_name and os.path.realpath(path) == \
                    os.path.realpath(_THIS_FILE):
                continue
            if exclude and _source_pattern_hit(prefix + name, exclude):
                continue
            yield prefix + name, path


def _copy_files(src_root, rel_paths, dest_root):
    for rel in rel_paths:
        dest = os.path.join(dest_root, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(os.path.join(src_root, rel), dest)


def _init_run(run_dir, attrs, staged, source_root=None, source_files=()):
    """Create a run directory; the attrs file is written last, atomically.

    Until then the directory is not a run, so a crash leaves no half run:
    its first file names its creator (the STAGED marker or the pending
    claim), and once the creator is dead, listings remove it (see
    _remove_unborn). A staged run gets its index entry before it becomes
    a run.
    """
    run_dir = os.path.abspath(run_dir)
    if os.path.exists(os.path.join(run_dir, ".guild", RUN_ATTRS)):
        raise RunError("run directory '%s' is already in use" % run_dir)
    gdir = os.path.join(run_dir, ".guild")
    _ensure_dir(gdir)
    run_id = os.path.basename(run_dir)
    run = Run(run_id, run_dir)
    if staged:
        with open(os.path.join(gdir, STAGED_MARKER), "w") as f:
            f.write(json.dumps(_process_owner()))
    else:
        set_run_pending(run)
    if source_root:
        _copy_files(source_root, source_files, run_dir)
    attrs = dict(attrs, id=run_id, created=_timestamp(),
                 sourcecode=list(source_files))
    if staged and os.path.dirname(run_dir) == _runs_dir():
        _index_put("staged", _index_name(run_id, attrs["created"]), {})
    _write_json(os.path.join(gdir, RUN_ATTRS), attrs)
    return run


def _print_staged(run, run_dir_given):
    desc = run.op_desc
    if run_dir_given:
        _echo("%s staged in '%s'" % (desc, run.dir))
        _echo("To start the operation, use 'guild run --start %s'" % run.dir)
    else:
        _echo("%s staged as %s" % (desc, run.id))
        _echo("To start the operation, use 'guild run --start %s'" % run.id)


# ---------------------------------------------------------------------------
## 11. The script's process
# ---------------------------------------------------------------------------
#
# A script runs as `__main__` in a process of its own: a fork of the guild
# process (Linux), or a fresh interpreter that loads this very file by path
# (`python /path/to/guild.py --guild-script-process WORD...`, so a copied
# guild.py works). Both call _script_process_main with the same words, and
# it makes the process what `python SCRIPT ARG...` would be:
#
#   run REPLACE SCRIPT [ARG...]  run SCRIPT with argv [SCRIPT, ARG...];
#                                REPLACE is JSON, {global: value}, values
#                                that replace the script's own literals
#   probe OUT SCRIPT             run SCRIPT until it parses its arguments,
#                                write its argparse options to OUT (JSON)
#                                and exit

SCRIPT_PROCESS_ARG = "--guild-script-process"


def _script_process_main(words):
    """Be the script's process that words describe; return its exit code.

    A script ended by Ctrl-C ends this process by SIGINT, as Python does.
    Stop signals stay held (as the watcher started it: see _hold_stops)
    until the script runs: none cuts guild's own steps short.
    """
    what, arg, script, args = words[0], words[1], words[2], words[3:]
    try:
        with open(script, "rb") as f:
            source = f.read()
    except OSError as e:  # as the interpreter says it
        sys.stderr.write("%s: can't open file %r: [Errno %d] %s\n" % (
            sys.executable, os.path.abspath(script), e.errno, e.strerror))
        return 2
    # Python 3.9+ makes the path of the script it runs absolute (its
    # __file__, its tracebacks); sys.argv[0] stays as given.
    path = os.path.abspath(script) if sys.version_info >= (3, 9) else script
    if what == "probe":
        _patch_parsers_to_describe(arg, _CLICK_IMPORT_RE.search(source))
        code = _compile_script(source, path)
    else:
        code = _compile_script(source, path, json.loads(arg))
    own_pid = os.getpid()
    record = os.environ.pop(RECORD_ENV, None)
    if record:
        record = json.loads(record)
        _die_with(record["pid"])
    if what == "run":  # in the run's directory, writing its output
        _tag_stderr(os.path.abspath(".guild"))
    _set_script_path(os.path.dirname(os.path.abspath(script)))
    sys.argv = [script] + args
    if hasattr(sys, "orig_argv"):  # 3.10+: as `python SCRIPT ARG...` has it
        sys.orig_argv = [sys.executable] + sys.argv  # novermin
    if record and not _record_script_start(record):
        return 1  # its watcher was stopped first: the run never started
    status = _exec_as_main(code, path)
    try:
        _end_process()
    except KeyboardInterrupt:  # Ctrl-C while threads were joined
        status = -signal.SIGINT
    finally:  # the script is over: a stop now must not cut its record
        _hold_stops()
    # Only the script's own process records the run's exit: a child it
    # forked comes back here too, and must not.
    if what == "run" and os.getpid() == own_pid:
        _record_script_exit(status)
    _flush_open_files()
    if status < 0:
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        if _HELD_SIGNALS:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [-status])
    return status


# The record of the run's process (proc.json) as its watcher starts it:
# the script's process adds itself (child) and writes it as the script
# starts. Taken out of the environment before the script runs.
RECORD_ENV = "GUILD_RUN_RECORD"


def _record_script_start(record):
    """Record this process as the run's, just before the script runs,
    unless the watcher (record["pid"]) let the run go: a stop reached it
    first (see _end_unstarted). The status lock makes the two exclusive:
    the script starts recorded, or not at all. Returns True if recorded."""
    run = Run(os.environ["RUN_ID"], os.environ["RUN_DIR"])
    record["child"] = _process_owner(os.getpid())
    with Lock(RUN_STATUS, timeout=60):
        claim = _read_dict(run.guild_path(PENDING_CLAIM))
        if claim.get("pid") != record["pid"] or os.path.lexists(
                run.guild_path(PROC_ATTRS)):
            return False
        _record_start(run, record)
    return True


if sys.platform.startswith("linux"):

    def _die_with(watcher_pid):
        """Have the kernel kill this process when its parent, the guild
        process watching the run, dies, however it dies (kill -9 too);
        if it is already gone, exit now."""
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != watcher_pid:
            os._exit(1)

else:  # pragma: no cover - only the signals a watcher handles reach it

    def _die_with(_watcher_pid):
        pass


class _TaggedStderr(io.RawIOBase):
    """The script's stderr: what it writes goes to the run's output file
    as fd 2 would put it there, and is noted in STDERR_SPANS as
    _StderrSpans (section 8) reads it. The output file is written through
    a file description of this object's own, so the offset a write
    leaves is where that write ended, whatever other writers do."""

    def __init__(self, guild_dir):
        super().__init__()
        self._guild_dir = guild_dir
        self._pid = None
        self._open()

    def _open(self):
        """Open the files for this process (again in a forked child: the
        parent's offsets are not the child's to read)."""
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0)
        out = os.open(os.path.join(self._guild_dir, OUTPUT_FILE), flags)
        try:
            notes = os.open(os.path.join(self._guild_dir, STDERR_SPANS),
                            flags | os.O_CREAT, 0o666)
        except OSError:
            os.close(out)
            raise
        if self._pid is not None:  # the parent's copies
            os.close(self._out)
            os.close(self._notes)
        self._out, self._notes = out, notes
        self._pid = os.getpid()
        self._begin_note = b"%d b\n" % self._pid
        self._lock = threading.Lock()

    def write(self, data):
        if os.getpid() != self._pid:
            try:
                self._open()
            except OSError:  # the run's files are gone: write untagged
                return os.write(2, data)
        with self._lock:
            os.write(self._notes, self._begin_note)
            size = os.write(self._out, data)
            end = os.lseek(self._out, 0, os.SEEK_CUR)
            os.write(self._notes, b"%d e %d %d\n" % (
                self._pid, end - size, end))
        return size

    def writable(self):
        return True

    def fileno(self):
        return 2

    def isatty(self):
        return False


def _tag_stderr(guild_dir):
    """Make sys.stderr a _TaggedStderr for the run whose .guild directory
    is guild_dir; where its files cannot be opened, stderr stays as is."""
    try:
        raw = _TaggedStderr(guild_dir)
    except OSError:
        return
    sys.stderr.flush()
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        raw, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
        errors="backslashreplace", write_through=True)


def _compile_script(source, script, replace=None):
    """The script's code; with replace, its module-level assignments of
    the names replace holds assign replace's values instead."""
    if not replace:
        return compile(source, script, "exec", dont_inherit=True)
    import ast
    tree = ast.parse(source, script)
    for name, node in _module_assignments(ast, tree):
        if name in replace:
            node.value = ast.copy_location(
                _ast_literal(ast, replace[name]), node.value)
    return compile(ast.fix_missing_locations(tree), script, "exec",
                   dont_inherit=True)


def _ast_literal(ast, val):
    if isinstance(val, list):
        return ast.List(elts=[_ast_literal(ast, x) for x in val],
                        ctx=ast.Load())
    return ast.Constant(value=val)


_NAMESPACES = ("batch_util", "op_util", "lock", "run")


def _register_module(name):
    """Make `import NAME` and `import NAME.batch_util` (and the other
    namespaces) give this module: run as a program, it is __main__."""
    sys.modules[name] = _THIS_MODULE
    for ns in _NAMESPACES:  # defined in section 21
        sys.modules[name + "." + ns] = getattr(_THIS_MODULE, ns)


def _set_script_path(script_dir):
    """Make sys.path and sys.modules what `python SCRIPT` would have.

    The script's directory comes first on sys.path. `import guild` gets
    this file. A module guild imported that the interpreter had not, and
    that the script's directory holds a file of the same name for (a
    `json.py`), is forgotten, so the script imports its own.
    """
    if _OWN_PATH_ENTRY is None and sys.path:
        sys.path[0] = script_dir
    else:  # guild's own entry was taken off at start (section 1)
        sys.path.insert(0, script_dir)
    _register_module("guild")
    try:
        names = os.listdir(script_dir)
    except OSError:
        names = []
    local = {n[:-3] for n in names if n.endswith(".py")} | {
        n for n in names
        if os.path.isfile(os.path.join(script_dir, n, "__init__.py"))}
    for name in list(sys.modules):
        top = name.partition(".")[0]
        if top in local and top not in _INTERPRETER_MODULES:
            del sys.modules[name]


def _exec_as_main(code, script):
    """Run code as module __main__; return the exit code it ends with.

    An uncaught exception is shown as the interpreter shows it, the
    traceback starting at the script. Stop signals held until now (see
    _script_process_main) reach the script as it starts.
    """
    import importlib.machinery
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = builtins
    main.__cached__ = None
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    if sys.version_info < (3, 14):  # the interpreter's __main__ has one
        main.__annotations__ = {}
    for name in list(sys.modules):  # guild's namespaces (section 21)
        if name.startswith("__main__."):
            del sys.modules[name]
    sys.modules["__main__"] = main
    try:
        _hold_stops(False)
        exec(code, main.__dict__)
    except SystemExit as e:
        return _system_exit_status(e)
    except BaseException as e:
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        sys.excepthook(type(e), e, e.with_traceback(tb).__traceback__)
        return -signal.SIGINT if isinstance(e, KeyboardInterrupt) else 1
    return 0


def _system_exit_status(e):
    """The exit code an interpreter gives for an uncaught SystemExit e:
    None is 0, an int is taken modulo 256, anything else is printed and
    is 1."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code & 0xFF
    try:
        print(e.code, file=sys.stderr)
    except Exception:
        pass
    return 1


def _end_process():
    """What an interpreter does at exit that a program can see: run the
    callbacks threading registered for shutdown (executors' among them),
    join the threads that are not daemons, run the exit handlers, flush
    stdout and stderr."""
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None and \
            threading.current_thread() is threading.main_thread():
        shutdown()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _flush_open_files():
    """Flush the files the script left open, as the interpreter's
    teardown would before a forked process ends by os._exit. guild's own
    objects were frozen at the fork, so gc does not list them."""
    for obj in gc.get_objects():
        if type(obj) in (io.TextIOWrapper, io.BufferedWriter,
                         io.BufferedRandom):
            try:
                obj.flush()
            except Exception:
                pass


def _record_script_exit(status):
    """Record the script's exit in the run's .guild directory (the
    working directory), so a run ends even if no guild process watches
    it any more."""
    try:
        _write_json(os.path.abspath(os.path.join(".guild", EXIT_ATTRS)), {
            "exit_status": status, "stopped": _timestamp(),
            "status": _exit_status_name(status, False)})
    except OSError:
        pass  # the run dir is gone; whoever watches records the exit


# The probe: parse_args and parse_known_args (argparse), or a click
# command's main, write what the parser holds and end the process,
# before the script does its work.

_ARGPARSE_KINDS = {"_StoreAction": "store", "_StoreTrueAction": "store_true",
                   "_StoreFalseAction": "store_false",
                   "BooleanOptionalAction": "switch"}
# click's type names, and the flag type each is
_CLICK_TYPES = {"integer": "int", "integer range": "int", "float": "float",
                "float range": "float", "boolean": "boolean"}


def _patch_parsers_to_describe(out_path, with_click):
    """Make argparse, and click where the script imports it, describe
    the script's options to out_path and exit, once it parses them."""
    def describe_argparse(parser, *_args, **_kw):
        _write_json(out_path, _argparse_flags(parser))
        os._exit(0)
    argparse.ArgumentParser.parse_args = describe_argparse
    argparse.ArgumentParser.parse_known_args = describe_argparse
    if not with_click:
        return
    try:
        import click.core  # the script's own dependency, in its process
    except ImportError:
        return

    def describe_click(command, *_args, **_kw):
        _write_json(out_path, _click_flags(command))
        os._exit(0)
    click.core.Command.main = describe_click


def _json_default(val, other=str):
    """A default as JSON can hold it: a tuple is a list, another object
    other(val) (its text for argparse; click's no-default sentinel is
    None)."""
    if isinstance(val, tuple):
        val = list(val)
    try:
        json.dumps(val)
    except (TypeError, ValueError):
        return other(val)
    return val


def _list_default(val):
    """The default of an option taking several values, as a flag value:
    the words joined by spaces (`1 2`), as Guild AI shows it."""
    if isinstance(val, list):
        return " ".join(encode_flag_val(x) if not isinstance(x, str) else x
                        for x in val)
    return val


def _argparse_flags(parser):
    """The flag definitions of an argparse parser's options, a list.

    A flag is named by its first long option (else its short one) without
    dashes, as Guild AI names it, whatever its dest.
    """
    flags = []
    for a in parser._actions:
        kind = _ARGPARSE_KINDS.get(type(a).__name__)
        if not kind or not a.option_strings or \
                a.nargs in (argparse.REMAINDER, argparse.PARSER):
            continue
        longs = [o for o in a.option_strings if o.startswith("--")]
        arg = (longs or a.option_strings)[0]
        flag = {"name": arg.lstrip("-"), "arg": arg, "kind": kind,
                "type": "boolean", "default": _json_default(a.default),
                "help": a.help or "", "required": bool(a.required),
                "choices": _json_default(list(a.choices))
                if a.choices else None}
        if kind == "switch":
            flag["off_arg"] = [o for o in a.option_strings
                               if o.startswith("--no-")][0]
        elif kind == "store":
            if a.type is bool:  # bool("False") is True: pass '' for no
                flag["kind"] = "bool_value"
            else:
                _set_value_type(flag, a.type in (int, float) and
                                a.type.__name__, a.nargs)
        flags.append(flag)
    return flags


def _set_value_type(flag, declared, nargs):
    """Type a flag that takes a value: by its declared type (int,
    float), else by its default; nargs other than one makes the value a
    space-separated list (`layers='64 32'`)."""
    default = flag["default"]
    if declared:
        flag["type"], flag["declared"] = declared, True
    elif isinstance(default, (int, float)) and not isinstance(default,
                                                              bool):
        flag["type"] = type(default).__name__
    else:
        flag["type"] = "string"
    if nargs not in (None, "?", 1):
        flag["nargs"] = nargs
        flag["default"] = _list_default(default)


def _click_flags(command):
    """The flag definitions of a click command's options, a list (a
    group's own options; its subcommands are not flags)."""
    flags = []
    for p in command.params:
        if getattr(p, "param_type_name", "") != "option" or p.multiple \
                or not p.opts:
            continue
        longs = [o for o in p.opts if o.startswith("--")]
        arg = (longs or p.opts)[0]
        flag = {"name": arg.lstrip("-"), "arg": arg, "kind": "store",
                "type": "boolean",
                "default": _json_default(p.default, lambda _: None),
                "help": getattr(p, "help", None) or "",
                "required": bool(p.required), "choices": None}
        if p.is_flag:
            if not getattr(p, "is_bool_flag", False):
                continue  # flag_value options: not a yes/no
            if p.secondary_opts:
                flag.update(kind="switch", off_arg=p.secondary_opts[0])
            else:
                flag["kind"] = "store_true"
            flag["default"] = bool(flag["default"])
        else:
            choices = getattr(p.type, "choices", None)
            if choices:
                flag["choices"] = _json_default(list(choices))
            declared = _CLICK_TYPES.get(p.type.name)
            if declared != "boolean":  # click reads yes and no itself
                _set_value_type(flag, declared, p.nargs)
        flags.append(flag)
    return flags


# Starting the process: a fork, or a fresh interpreter.

def _start_script_process(words, cwd, env, out_fd, fork):
    """Start the script's process for words (see above) in directory cwd
    with environment env, in a session of its own, its stdout and stderr
    writing to out_fd (None: discarded); return a Popen or a
    _ForkedProcess."""
    if fork:
        return _fork_script_process(words, cwd, env, out_fd)
    import subprocess
    cmd = ([sys.executable] + subprocess._args_from_interpreter_flags()
           + [_this_file_compiled(), SCRIPT_PROCESS_ARG] + list(words))
    popen_kw = {}
    if IS_WINDOWS:  # pragma: no cover
        popen_kw["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
    else:
        popen_kw["start_new_session"] = True
    if out_fd is None:  # a probe: no terminal in, nothing out
        popen_kw.update(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    else:
        popen_kw.update(stdout=out_fd, stderr=subprocess.STDOUT)
    return subprocess.Popen(cmd, cwd=cwd, env=env, **popen_kw)


def _this_file_compiled():
    """This file's bytecode, for a fresh interpreter to run: Python
    compiles a file it is given to run on every start, and compiling
    guild.py costs about as much as the interpreter's start-up. Kept in
    GUILD_HOME/code (not the cache, which may be deleted while runs
    start), named by this file's path and Python's version; this file
    itself where it cannot be written."""
    import importlib.util
    pyc = os.path.join(_guild_home(), "code", "%08x-%s" % (
        zlib.crc32(_THIS_FILE.encode("utf-8", "replace")),
        os.path.basename(importlib.util.cache_from_source(_THIS_FILE))))
    try:
        source = os.stat(_THIS_FILE)
        with open(pyc, "rb") as f:
            header = f.read(16)
        if header == importlib.util.MAGIC_NUMBER + b"".join(
                (x & 0xFFFFFFFF).to_bytes(4, "little") for x in (
                    0, int(source.st_mtime), source.st_size)):
            return pyc  # compiled from this very source
    except OSError:
        pass
    import py_compile
    try:
        return py_compile.compile(
            _THIS_FILE, cfile=pyc, doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
    except (OSError, py_compile.PyCompileError):
        return _THIS_FILE


class _ForkedProcess:
    """A forked child, with the part of Popen that guild uses."""

    def __init__(self, pid):
        self.pid = pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._set_returncode(status)
        return self.returncode

    def wait(self):
        """Wait for the child to exit; return its Popen-style returncode."""
        if self.returncode is None:
            self._set_returncode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def _set_returncode(self, status):
        self.returncode = (-os.WTERMSIG(status) if os.WIFSIGNALED(status)
                           else os.WEXITSTATUS(status))

    def kill(self):
        os.kill(self.pid, signal.SIGKILL)


def _fork_script_process(words, cwd, env, out_fd):
    """Start the script's process as a fork of this one: what a fresh
    interpreter would do, less its start-up."""
    for stream in (sys.stdout, sys.stderr):  # or the child writes it again
        stream.flush()
    if words[0] == "run":  # imported once for all the scripts a queue forks
        __import__("ctypes")
        if words[1] != "{}":
            __import__("ast")
    pid = os.fork()
    if pid:
        return _ForkedProcess(pid)
    status = 1
    try:  # the child never returns into guild: it ends here, whatever happens
        _become_script_process(cwd, env, out_fd)
        status = _script_process_main(words)
    except BaseException:  # pragma: no cover - a failure before the script
        try:
            sys.excepthook(*sys.exc_info())
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(status)


def _reset_process_state():
    """In a forked child: guild's state as a fresh import leaves it, and
    signal handlers as a fresh interpreter has them (a handler set in
    Python is not inherited across exec; an ignored signal is). logging,
    if guild imported it, is forgotten: the script sets up its own."""
    _STATE.reset()  # record locks, for one, are not inherited by a fork
    if "logging" not in _INTERPRETER_MODULES:
        for name in list(sys.modules):
            if name == "logging" or name.startswith("logging."):
                del sys.modules[name]
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler):
            signal.signal(signum, signal.default_int_handler
                          if signum == signal.SIGINT else signal.SIG_DFL)


def _become_script_process(cwd, env, out_fd):
    """In a forked child: become what a fresh interpreter started by
    _start_script_process would be: its own session and directory, only
    stdin, stdout and stderr open, the environment env, default signal
    handlers and exit handlers, new standard streams, and guild's state
    as a fresh import leaves it."""
    gc.freeze()  # guild's objects are not the script's to collect
    _reset_process_state()
    os.setsid()
    os.chdir(cwd)
    if out_fd is None:  # a probe: no terminal in, nothing out
        null_fd = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null_fd, fd)
    else:
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
    for fd in os.listdir("/proc/self/fd"):  # forks happen on Linux only
        if int(fd) > 2:
            try:
                os.close(int(fd))
            except OSError:
                pass
    os.environ.clear()
    os.environ.update(env)
    atexit._clear()
    encoding = getattr(sys.__stdout__, "encoding", None) or "utf-8"
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.FileIO(1, "w", closefd=False), encoding=encoding,
        errors=_INTERPRETER_STDOUT_ERRORS or "strict", write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding=encoding,
        errors="backslashreplace", write_through=True)


# ---------------------------------------------------------------------------
## 12. Starting and stopping runs
# ---------------------------------------------------------------------------


def _startable_attrs(run):
    """A run's attrs (run.json); RunError if it cannot start."""
    attrs = run._attrs()
    problem = _unstartable(attrs)
    if not problem and attrs["op"]["kind"] == "script" and not os.path.exists(
            os.path.join(run.dir, attrs["op"]["script"])):
        problem = "the script %s is missing from its directory %s" % (
            attrs["op"]["script"], run.dir)
    if problem:
        raise RunError("cannot start %s: %s" % (run.id, problem))
    return attrs


def _start_run(run, gpus=None):
    """Run a claimed or new run to its end; return its exit status.

    Records the process (running: a batch or queue here, a script's
    process itself as the script starts), then how it ended. A stop
    request (SIGTERM, Ctrl-C, SIGHUP) ends the run 'terminated' and
    propagates; one that came before the script started stages a staged
    run again (a foreground run ends terminated, never having run).
    """
    attrs = _startable_attrs(run)
    kind = attrs["op"]["kind"]
    record = dict(_process_owner(), started=_timestamp())
    slurm = _slurm_task()
    if slurm:  # a restarted task finds what its earlier self left
        record["slurm"] = slurm
    _index_move("claims", _index_name(run.id, attrs.get("created")),
                "running", run.id, keep=True)
    if kind != "script":  # a script's process records itself (section 11)
        _record_start(run, record)
    gpus = attrs.get("gpus") if gpus is None else gpus
    stop = None
    exit_status = 1
    out = None
    if kind != "script":  # batch and queue output: what they show
        out = open(run.guild_path(OUTPUT_FILE), "ab")
        _STATE.output_files.append(out)
    try:
        if kind == "script":
            exit_status = _run_script(run, attrs, gpus, record)
        elif kind == "batch":
            exit_status = _run_batch(run, attrs)
        elif kind == "queue":
            exit_status = _run_queue(run, attrs)
        else:
            raise OpError("unknown operation kind '%s'" % kind)
    except _StopRequested as e:
        stop = e
        exit_status = -e.signum
    except KeyboardInterrupt:
        stop = _StopRequested(signal.SIGINT)
        exit_status = -signal.SIGINT
    finally:
        if out is not None:
            _STATE.output_files.remove(out)
            out.close()
        status = _exit_status_name(exit_status, stop is not None)
        recorded = _read_json(run.guild_path(EXIT_ATTRS))
        unstarted = not os.path.lexists(run.guild_path(PROC_ATTRS))
        if unstarted and stop is not None and os.path.exists(
                run.guild_path(STAGED_MARKER)):
            _restage_unstarted(run, attrs)  # stopped before it started
        else:
            if not isinstance(recorded, dict) or (
                    recorded.get("exit_status"), recorded.get("status")) != (
                    exit_status, status):  # the script's own record may do
                _write_json(run.guild_path(EXIT_ATTRS), {
                    "exit_status": exit_status, "stopped": _timestamp(),
                    "status": status})
            if unstarted:  # it ended as it was starting: not pending
                _mark_started(run)
        _index_drop("running", run.id)
    if stop is not None:
        raise stop
    return exit_status


def _restage_unstarted(run, attrs):
    """Stage again a staged run that a stop reached before its script
    started: a gentle stop keeps what a hard one (kill -9) keeps. Its
    STAGED marker is still there; the claim goes."""
    with Lock(RUN_STATUS, timeout=60):
        _release_claim(run)
        _index_move("claims", _index_name(run.id, attrs.get("created")),
                    "staged")
    log.info("Run %s was stopped before its script started; it is staged "
             "again", run.id)


def _script_words(attrs):
    """The words of a script run's process (section 11) and the command
    that the script sees: [python, SCRIPT, ARG...].

    A globals-style script's flags replace its assignments; flags it does
    not assign (--force-flags) are passed as arguments, as are an
    argparse or click script's (see _flag_args).
    """
    op = attrs["op"]
    flags = attrs.get("flags") or {}
    script = op["script"]
    flagdefs = op.get("flagdefs") or {}
    replace = {}
    if op.get("flags_mode") == "globals":
        replace = {n: v for n, v in flags.items() if n in flagdefs}
        flags = {n: v for n, v in flags.items() if n not in flagdefs}
        flagdefs = {}
    args = _flag_args(flags, flagdefs)
    return (["run", json.dumps(replace), script] + args,
            [sys.executable, script] + args)


def _run_script(run, attrs, gpus, record):
    """Start the script's process, record it as the run's, and watch it
    to its end; return its exit status."""
    env = dict(os.environ, RUN_DIR=run.dir, RUN_ID=run.id,
               GUILD_HOME=_guild_home(), PYTHONUNBUFFERED="1")
    if _STATE.notice_handled:  # the script may checkpoint when it gets this
        env["GUILD_PREEMPT_SIGNAL"] = "USR1"
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus)
    words, command = _script_words(attrs)
    # The script's process records itself, and dies with this one.
    env[RECORD_ENV] = json.dumps(dict(record, command=command))
    output_path = run.guild_path(OUTPUT_FILE)
    recorder = _ScalarRecorder(run.guild_path(SCALARS_FILE))
    _hold_stops()  # until _supervise's handler takes them (see above)
    try:
        # The script writes its output file itself; this process shows it.
        with open(output_path, "ab") as out:
            offset = out.tell()
            streams = _StderrSpans(run.dir, offset, recorder.feed)
            proc = _start_script_process(words, run.dir, env, out.fileno(),
                                         _fork_possible())
        stop_after = attrs.get("stop_after")
        try:
            return _supervise(proc, output_path, offset, streams.feed,
                              stop_after and
                              time.monotonic() + stop_after * 60,
                              lambda exited: _end_unstarted(run, proc,
                                                            exited))
        finally:
            streams.close()
    finally:
        recorder.close()
        _hold_stops(False)


def _end_unstarted(run, proc, exited):
    """End a script's process that has not recorded its start, on a stop
    (see _record_script_start); True if it had not, False if the script
    started. Under the status lock, which the process takes to record
    itself: it is ended before it can, or it has."""
    with Lock(RUN_STATUS, timeout=60):
        if os.path.lexists(run.guild_path(PROC_ATTRS)):
            return False
        if not exited.is_set():
            try:
                proc.kill()
            except OSError:
                pass
            exited.wait(10)
    return True


def _supervise(proc, output_path, offset, on_output, deadline=None,
               end_unstarted=None):
    """Show the script's output as it grows until it exits; pass each new
    piece to on_output too. At deadline (time.monotonic()), if given, the
    script's process group gets SIGTERM (run --stop-after).

    A stop that comes before the script is known to have started goes to
    end_unstarted(exited), if given: it ends the process unless the
    script started (True), else the stop is the script's, as below.

    Ctrl-C and SIGTERM are forwarded to the script's process group (a
    second one kills it) and, once it has exited, raised as a stop: the
    run then ends terminated with all its output shown and recorded.
    After a preemption notice (see _Notice) the script has the notice's
    grace to end before it gets SIGTERM; its end is a stop by SIGUSR1.
    """
    exited = threading.Event()
    waiter = threading.Thread(target=lambda: (proc.wait(), exited.set()),
                              daemon=True)
    waiter.start()
    stops = []
    starting = [end_unstarted is not None]

    def forward(signum, _frame):
        stops.append(signum)
        if not starting[0]:
            _signal_process_group(proc.pid, signal.SIGKILL if len(stops) > 1
                                  and not IS_WINDOWS else signum)

    delay = 0.005
    _STATE.notice_script_pid = proc.pid
    with _handle_stop_signals(forward), open(output_path, "rb") as f:
        f.seek(offset)
        while True:
            done = exited.wait(delay)
            if stops and starting[0]:
                starting[0] = False
                if not end_unstarted(exited):  # started: the stop is its
                    forward(stops.pop(), None)
            _beat()  # at most every beat interval; else a clock read
            if _STATE.notice_at is not None and not done:
                _Notice.deliver()  # again, if the script had no group yet
                if _Notice.grace_over() and not stops:
                    forward(signal.SIGTERM, None)
            if deadline and not done and time.monotonic() >= deadline:
                log.info("Stopping the run: its time (--stop-after) is up")
                _signal_process_group(proc.pid, signal.SIGTERM)
                deadline = None
            chunk = f.read(OUTPUT_CHUNK)
            if chunk:
                on_output(chunk)
                _tee(chunk)
                delay = 0 if len(chunk) == OUTPUT_CHUNK else 0.005
            else:
                delay = min(delay * 2, 0.1)
                if done:
                    break
    waiter.join()
    _STATE.notice_script_pid = None
    if stops:
        raise _StopRequested(signal.SIGUSR1 if _STATE.notice_at else stops[0])
    if _STATE.notice_at is not None and proc.returncode != 0:
        raise _StopRequested(signal.SIGUSR1)  # 0: it finished after all
    return proc.returncode


class _Notice:
    """A preemption notice: SIGUSR1, which Slurm sends a job `--signal`
    seconds before its time limit (and some clusters before preempting).
    The script being watched gets USR1 too (it may save a checkpoint),
    and SIGTERM once `grace` seconds have passed; a queue then claims
    nothing more and stages the interrupted run again, unless its script
    exited 0 (it finished: the notice came too late to matter). Its
    state is _STATE.notice_*."""

    @classmethod
    def install(cls):
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, cls.receive)
            _STATE.notice_handled = True

    @classmethod
    def receive(cls, signum, _frame):
        if _STATE.notice_at is None:
            _STATE.notice_at = time.monotonic()
        cls.deliver()

    @classmethod
    def deliver(cls):
        """Pass the notice on to the script's process group, once."""
        pid = _STATE.notice_script_pid
        if pid and _STATE.notice_delivered != pid:
            try:
                os.killpg(pid, signal.SIGUSR1)
                _STATE.notice_delivered = pid
            except OSError:  # a forked script not yet in its own group
                pass

    @classmethod
    def grace_over(cls):
        at = _STATE.notice_at
        return at is not None and time.monotonic() - at > _STATE.notice_grace


class _handle_stop_signals:
    """Route SIGINT and SIGTERM to handler in a with block (main thread
    only; elsewhere signals are not delivered to us anyway)."""

    def __init__(self, handler):
        self.handler = handler
        self.saved = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            names = ("SIGINT",) + _STOP_SIGNALS
            self.saved = [(getattr(signal, n), signal.signal(
                getattr(signal, n), self.handler)) for n in names]
            _hold_stops(False)  # a held stop goes to handler now
        return self

    def __exit__(self, *_exc):
        for signum, old in self.saved or ():
            signal.signal(signum, old)


def _signal_process_group(pid, signum):
    try:
        if IS_WINDOWS:  # pragma: no cover
            os.kill(pid, signal.SIGTERM)
        else:
            os.killpg(pid, signum)
    except OSError:
        pass


def _stop_run(run):
    """Ask a running run to stop; return False if it is not running.

    A script run's process group gets SIGTERM (its watcher then records
    'terminated'); a batch or queue is its own process and gets SIGTERM.
    """
    proc = _read_json(run.guild_path(PROC_ATTRS))
    if not isinstance(proc, dict) or run.status != "running":
        return False
    if proc.get("host", HOST) != HOST:
        raise RunError("run %s runs on host %s: stop it there"
                       % (run.id, proc["host"]))
    child = proc.get("child")
    if run.opref.kind == "script" and _owner_alive(child):
        _signal_process_group(child["pid"], signal.SIGTERM)
    elif _owner_alive(proc):
        try:
            os.kill(proc["pid"], signal.SIGTERM)
        except OSError:
            pass
    return True


def _finish_stopped(run, deadline):
    """Wait for a stopped run to end; kill it or record it if need be."""
    proc = _read_dict(run.guild_path(PROC_ATTRS))
    while run.status == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    child = proc.get("child")
    if run.status == "running" and _owner_alive(child) and not IS_WINDOWS:
        _signal_process_group(child["pid"], signal.SIGKILL)
        time.sleep(0.1)
    if not os.path.exists(run.guild_path(EXIT_ATTRS)) and \
            not _owner_alive(proc) and not _owner_alive(child):
        _write_json(run.guild_path(EXIT_ATTRS), {
            "exit_status": -signal.SIGTERM, "stopped": _timestamp(),
            "status": "terminated"})


# ---------------------------------------------------------------------------
## 13. Batches and trials
# ---------------------------------------------------------------------------


class _Grid:
    """The cartesian product of list flag values, by flag name, without
    making it: a grid of a billion trials costs what its lists cost."""

    def __init__(self, flags):
        self.names = sorted(flags)
        self.choices = [v if isinstance(v, list) else [v]
                        for v in (flags[n] for n in self.names)]
        self.size = 1
        for values in self.choices:
            self.size *= len(values)

    def trial(self, i):
        """The i-th trial, in itertools.product order."""
        vals = []
        for values in reversed(self.choices):
            i, j = divmod(i, len(values))
            vals.append(values[j])
        return dict(zip(self.names, reversed(vals)))


def _sample(val, rnd):
    """One random draw of a flag value: a choice, a distribution, a value."""
    if isinstance(val, list):
        return rnd.choice(val) if val else None
    if not is_distribution(val):
        return val
    low, high = val["low"], val["high"]
    if val["$dist"] == "loguniform":
        x = math.exp(rnd.uniform(math.log(low), math.log(high)))
    elif isinstance(low, int) and isinstance(high, int):
        return rnd.randint(low, high)
    else:
        x = rnd.uniform(low, high)
    return float("%.6g" % x)  # six digits read well in labels


def batch_trials(attrs):
    """The flag values of each trial of a batch run, from its attrs.

    Grid (+): the product of list values, or one trial per batch file row
    (with any lists given beside the files), cut to max_trials chosen at
    random in grid order. Random: max_trials draws (default 20). The
    batch's random_seed makes both reproducible. tpe has no trials to list:
    each depends on the results of those before it.
    """
    if attrs["op"]["name"] == "tpe":
        raise UsageError("tpe proposes each trial from the results of the "
                         "trials before it: its trials cannot be listed or "
                         "saved in advance")
    proto = attrs["proto"]
    flags = proto.get("flags") or {}
    rnd = random.Random(attrs.get("random_seed"))
    max_trials = attrs.get("max_trials")
    if attrs["op"]["name"] == "random":
        names = sorted(flags)
        return [{n: _sample(flags[n], rnd) for n in names}
                for _ in range(max_trials or DEFAULT_MAX_TRIALS)]
    grids = _batch_grids(attrs)
    total = sum(grid.size for grid in grids)
    picked = range(total)
    if max_trials and total > max_trials:
        picked = sorted(rnd.sample(picked, max_trials))
    trials = []
    for i in picked:
        for grid in grids:
            if i < grid.size:
                trials.append(grid.trial(i))
                break
            i -= grid.size
    return trials


def _batch_grids(attrs):
    """The grids of a grid search: one, or one per batch file row."""
    proto = attrs["proto"]
    flags = proto.get("flags") or {}
    rows = attrs.get("batch_rows")
    if not rows:
        return [_Grid(flags)]
    given = set(proto.get("given") or ())
    grids = []
    for row in rows:
        base = dict(flags)
        base.update((k, v) for k, v in row.items() if k not in given)
        grids.append(_Grid(base))
    return grids


def _check_batch_size(attrs):
    """UsageError for a batch with no trials, or more than MAX_TRIALS."""
    if attrs["op"]["name"] != "+":  # random, tpe: max_trials draws
        count = attrs.get("max_trials") or DEFAULT_MAX_TRIALS
    else:
        count = sum(grid.size for grid in _batch_grids(attrs))
        if count == 0:
            raise FlagError("the batch has no trials: a flag has an empty "
                            "list of values")
        count = min(count, attrs.get("max_trials") or count)
    if count > MAX_TRIALS:
        raise UsageError("the batch has %d trials, more than %d: sample "
                         "fewer with --max-trials" % (count, MAX_TRIALS))


def render_label(template, flags):
    """A label with each `${flag}` replaced by the flag's value."""
    def value(m):
        name = m.group(1)
        return encode_flag_val(flags[name]) if name in flags else m.group(0)
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_.\-]*)\}", value, template)


def init_trial_run(batch_run, trial_flag_vals, run_dir=None):
    """Create a staged trial of batch_run with trial_flag_vals; return it."""
    attrs = batch_run._attrs()
    proto = attrs["proto"]
    flags = dict(proto.get("flags") or {})
    flags.update(trial_flag_vals)
    label = proto.get("label")
    tags = attrs.get("tags") or []
    trial_attrs = {
        "op": proto["op"], "flags": flags,
        "label": render_label(label, flags) if label is not None
        else _default_label(flags, tags),
        "batch": batch_run.id, "gpus": attrs.get("gpus"),
        "project": attrs.get("project"), "tags": tags,
        "stop_after": attrs.get("stop_after")}
    if attrs.get("sourcecode_left_out"):
        trial_attrs["sourcecode_left_out"] = attrs["sourcecode_left_out"]
    run_dir = run_dir or os.path.join(_runs_dir(), mkid())
    return _init_run(run_dir, trial_attrs, staged=True,
                     source_root=batch_run.dir,
                     source_files=attrs.get("sourcecode") or ())


def _trial_desc(run):
    return "%s (%s)" % (run.op_desc, format_flags(run.flags, sep=", "))


def _try_run_staged_trial(trial_run, batch_run, status_lock):
    """Start trial_run if it is still staged; otherwise log and skip.

    The check and the claim happen under status_lock, so a batch and a
    queue never both start one trial. Returns the exit status, or None.
    """
    with status_lock:
        status = _claim_staged(trial_run)
    if status != "staged":
        log.warning("Skipping %s - status is '%s' but expected 'staged'",
                    trial_run.id, status)
        return None
    log.info("Running trial %s: %s", trial_run.id, _trial_desc(trial_run))
    return _start_run(trial_run)


def _batch_trial_summaries(batch_run):
    """A batch's trials as the store lists them, oldest first."""
    return sorted((x for x in run_summaries() if x["batch"] == batch_run.id),
                  key=lambda x: (x["created"] or 0, x["id"]))


def _run_trial(trial, batch_run, attrs):
    """Run a staged trial of batch_run; False if its failure stops the
    batch (--fail-on-trial-error)."""
    exit_status = _try_run_staged_trial(trial, batch_run,
                                        Lock(RUN_STATUS, timeout=60))
    if exit_status:
        log.error("Trial %s exited with an error (%s)", trial.id,
                  exit_status)
        if attrs.get("fail_on_trial_error"):
            log.error("Stopping batch (--fail-on-trial-error)")
            return False
    return True


def _run_batch(batch_run, attrs):
    """Create the batch's trials (staged), then run or leave them.

    Trials not reached (a stop, or --fail-on-trial-error) stay staged for
    a queue or `run --start`.
    """
    if attrs["op"]["name"] == "tpe":
        return _run_tpe_batch(batch_run, attrs)
    trials = [init_trial_run(batch_run, flag_vals)
              for flag_vals in batch_trials(attrs)]
    if attrs.get("stage_trials"):
        for trial in trials:
            log.info("Staging trial %s: %s", trial.id, _trial_desc(trial))
            _print_staged(trial, False)
        return 0
    started = time.monotonic()
    try:
        for n, trial in enumerate(trials, 1):
            _progress("trial %d/%d" % (n, len(trials)), started)
            if not _run_trial(trial, batch_run, attrs):
                return 1
        return 0
    except _StopRequested:
        log.info("Stopping batch")
        raise
    finally:
        made = {t.id for t in trials}
        _log_batch_finished([t.status for t in trials], sum(
            1 for x in _batch_trial_summaries(batch_run)
            if x["id"] not in made and x["status"] == "staged"))


def _log_batch_finished(statuses, earlier_staged=0):
    """The batch's closing line, from the statuses of its trials, and the
    number of trials an earlier start left staged (a restart makes new
    trials; the old ones still wait for a queue)."""
    counts = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    log.info("Batch finished: %d completed, %d failed, %d staged%s%s",
             counts.get("completed", 0), counts.get("error", 0),
             counts.get("staged", 0), ", %d terminated" % counts[
                 "terminated"] if counts.get("terminated") else "",
             " (and %d staged by an earlier start)" % earlier_staged
             if earlier_staged else "")


# ---------------------------------------------------------------------------
## 14. Optimizers: model-based search (tpe)
# ---------------------------------------------------------------------------

# A Tree-structured Parzen Estimator. The trials so far split into the few
# best ("below") and the rest ("above", which also holds failed trials,
# trials with no objective and trials still in flight: all count as bad).
# Each group is a mixture with one kernel per trial over all flags at once
# (multivariate: coupled flags stay coupled) plus a broad prior kernel.
# Candidates drawn from the good mixture compete on the ratio of the good
# density to the bad one. The prior, the split (the best 10%, at most 25)
# and the candidates follow Optuna's TPE sampler; the kernel widths follow
# its multivariate rule (Scott's: a width shrinking as trials accumulate,
# more slowly in more dimensions) at half its scale, with a floor of 1% of
# the range in place of its "magic clip" (a floor of range / (n + 2)).
# Narrower kernels search the good region more closely: at 50 trials they
# cut the median regret to between a half and a third on the functions of
# samples/bench/tpe.py (Hartmann-6 2.8x -> 4.8x better than random search,
# Rosenbrock-5 8.8x -> 17x, measured over 60 seeds) without losing on the
# multimodal Styblinski-Tang. The code here runs only when a tpe batch
# proposes a trial.

TPE_RANDOM_STARTS = 10  # trials drawn at random before the model is used
TPE_IN_FLIGHT = 4  # trials kept staged or running with --stage-trials
TPE_CANDIDATES = 24  # draws from the good mixture scored per proposal
_TPE_PRIOR_WEIGHT = 1.0
_TPE_BANDWIDTH = 0.1  # kernel width at one trial, as a fraction of a range
_TPE_MIN_WIDTH = 0.01  # the narrowest kernel, as a fraction of a range
_TPE_MAX_BELOW = 25
_TPE_FLAT_WEIGHTS = 25  # the newest trials weigh fully; older ones fade
# A trial in flight counts as bad (the constant liar), so proposals made
# before its result keep away from it; at a fraction of a finished
# trial's weight, so that a few in flight do not push the search out of
# a good region (4 in flight: regret 1.0-1.3x the sequential figure at
# 100 trials, against 1.1-3.5x at full weight; see the README).
_TPE_PENDING_WEIGHT = 0.3
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class _TpeDim:
    """One searched flag. Coordinates: the value for "float", its log for
    "log", the whole number for "int" (the range widened by half a step so
    that end values are as likely as others), the index of the choice for
    "choice"."""

    def __init__(self, name, kind, low, high, choices=None):
        self.name, self.kind, self.low, self.high = name, kind, low, high
        self.choices = choices

    def encode(self, val):
        """val's coordinate, or None if val is not in this dimension."""
        if self.kind == "choice":
            return next((i for i, c in enumerate(self.choices)
                         if c == val and type(c) is type(val)), None)
        if isinstance(val, bool) or not isinstance(val, (int, float)) or \
                val != val:
            return None
        if self.kind == "log":
            if val <= 0:
                return None
            val = math.log(val)
        return min(max(val, self.low), self.high)

    def decode(self, x):
        """The flag value at coordinate x: six significant digits, as
        random search gives, kept inside the range."""
        if self.kind == "choice":
            return self.choices[x]
        if self.kind == "int":
            return int(min(max(round(x), self.low + 0.5), self.high - 0.5))
        if self.kind == "log":
            low, high = math.exp(self.low), math.exp(self.high)
            x = math.exp(x)
        else:
            low, high = self.low, self.high
        return min(max(float("%.6g" % x), low), high)

    def random(self, rnd):
        if self.kind == "choice":
            return rnd.randrange(len(self.choices))
        if self.kind == "int":
            return rnd.randint(int(self.low + 0.5), int(self.high - 0.5))
        return rnd.uniform(self.low, self.high)


def _tpe_space(flags):
    """The searched flags of a batch's flags, by name: lists are choices,
    uniform[...] and [LOW:HIGH] ranges are floats or whole numbers,
    loguniform[...] is searched on a log scale."""
    dims = []
    for name in sorted(flags):
        val = flags[name]
        if isinstance(val, list) and val:  # one value: a choice still
            dims.append(_TpeDim(name, "choice", 0, len(val) - 1, list(val)))
        elif is_distribution(val):
            low, high = val["low"], val["high"]
            if val["$dist"] == "loguniform":
                dims.append(_TpeDim(name, "log", math.log(low),
                                    math.log(high)))
            elif isinstance(low, int) and isinstance(high, int):
                dims.append(_TpeDim(name, "int", low - 0.5, high + 0.5))
            else:
                dims.append(_TpeDim(name, "float", low, high))
    return dims


def _phi(z):
    """The standard normal cumulative distribution at z."""
    return 0.5 * math.erfc(-z / math.sqrt(2))


class _TpeKernels:
    """The kernels of a mixture along one dimension: for a number, a
    normal truncated to the range per kernel (mus, sigmas); for a choice,
    the log probability of each choice per kernel."""

    def __init__(self, dim, xs, n_dims):
        self.dim = dim
        n = len(xs)
        if dim.kind == "choice":
            m = len(dim.choices)
            # Each trial's kernel puts its choice first but leaves every
            # choice possible; the prior kernel is uniform.
            rows = []
            for x in xs:
                row = [_TPE_PRIOR_WEIGHT / (n + 1)] * m
                row[x] += 1.0
                total = sum(row)
                rows.append([math.log(p / total) for p in row])
            rows.append([-math.log(m)] * m)
            self.by_choice = [list(col) for col in zip(*rows)]
            return
        low, high = dim.low, dim.high
        width = high - low
        # Scott's rule shrinks kernels as trials accumulate, more slowly in
        # more dimensions; the floor keeps them from collapsing onto points.
        sigma = _TPE_BANDWIDTH * max(n, 1) ** (-1.0 / (n_dims + 4)) * width
        sigma = max(sigma, _TPE_MIN_WIDTH * width)
        self.mus = list(xs) + [0.5 * (low + high)]
        self.sigmas = [sigma] * n + [width]
        self.inv_sigmas = [1.0 / s for s in self.sigmas]
        self.log_masses = [
            math.log(max(_phi((high - mu) / s) - _phi((low - mu) / s),
                         1e-300))
            for mu, s in zip(self.mus, self.sigmas)]
        self.log_norms = [-math.log(s) - _LOG_SQRT_2PI - lm for s, lm in
                          zip(self.sigmas, self.log_masses)]

    def log_pdfs(self, x):
        """The log density (a whole number: the log probability of its
        step) of each kernel at coordinate x."""
        if self.dim.kind == "choice":
            return self.by_choice[x]
        if self.dim.kind == "int":
            return [math.log(max(_phi((x + 0.5 - mu) * iv) -
                                 _phi((x - 0.5 - mu) * iv), 1e-300)) - lm
                    for mu, iv, lm in zip(self.mus, self.inv_sigmas,
                                          self.log_masses)]
        return [ln - 0.5 * ((x - mu) * iv) ** 2 for mu, iv, ln in
                zip(self.mus, self.inv_sigmas, self.log_norms)]

    def sample(self, k, rnd):
        """A coordinate drawn from kernel k."""
        dim = self.dim
        if dim.kind == "choice":
            weights = [math.exp(col[k]) for col in self.by_choice]
            return rnd.choices(range(len(weights)), weights)[0]
        mu, sigma = self.mus[k], self.sigmas[k]
        while True:  # the kernel's mass in the range is at least a third
            x = rnd.gauss(mu, sigma)
            if dim.low <= x <= dim.high:
                break
        if dim.kind == "int":
            return int(min(max(round(x), dim.low + 0.5), dim.high - 0.5))
        return x


class _TpeMixture:
    """A Parzen estimator: weighted kernels at points, plus the prior."""

    def __init__(self, space, points, weights):
        total = sum(weights) + _TPE_PRIOR_WEIGHT
        self.weights = [w / total for w in weights] + [
            _TPE_PRIOR_WEIGHT / total]
        self.log_weights = [math.log(w) for w in self.weights]
        self.dims = [_TpeKernels(dim, [p[i] for p in points], len(space))
                     for i, dim in enumerate(space)]

    def log_pdf(self, point):
        totals = self.log_weights
        for kernels, x in zip(self.dims, point):
            totals = [a + b for a, b in zip(totals, kernels.log_pdfs(x))]
        top = max(totals)
        return top + math.log(sum(math.exp(t - top) for t in totals))

    def samples(self, n, rnd):
        picks = rnd.choices(range(len(self.weights)), self.weights, k=n)
        return [[kernels.sample(k, rnd) for kernels in self.dims]
                for k in picks]


def _tpe_weights(n):
    """Weights of n trials, oldest first: recent trials count fully, older
    ones fade (the model follows the search as it moves)."""
    if n <= _TPE_FLAT_WEIGHTS:
        return [1.0] * n
    ramp = n - _TPE_FLAT_WEIGHTS
    return [1.0 / n + (1.0 - 1.0 / n) * i / max(ramp - 1, 1)
            for i in range(ramp)] + [1.0] * _TPE_FLAT_WEIGHTS


def _tpe_propose(space, history, rnd, random_starts=TPE_RANDOM_STARTS,
                candidates=TPE_CANDIDATES, pending=frozenset()):
    """The coordinates of the next trial in space (a list of _TpeDim).

    history lists (coordinates, loss) of the trials so far, oldest first;
    loss is None for a bad trial (failed, no objective, still in flight).
    pending holds the indexes in history of the trials in flight. The
    first random_starts trials, and any while no trial has a loss, are
    drawn at random.
    """
    scored = [i for i, (_, loss) in enumerate(history) if loss is not None]
    if len(history) < random_starts or not scored or not space:
        return [dim.random(rnd) for dim in space]
    n_below = min(int(math.ceil(0.1 * len(history))), _TPE_MAX_BELOW,
                  len(scored))
    best = set(sorted(scored, key=lambda i: (history[i][1], i))[:n_below])
    below = [history[i][0] for i in range(len(history)) if i in best]
    above = [i for i in range(len(history)) if i not in best]
    good = _TpeMixture(space, below, _tpe_weights(len(below)))
    bad = _TpeMixture(space, [history[i][0] for i in above], [
        w * (_TPE_PENDING_WEIGHT if i in pending else 1.0)
        for w, i in zip(_tpe_weights(len(above)), above)])
    draws = good.samples(candidates, rnd)
    return max(draws, key=lambda x: good.log_pdf(x) - bad.log_pdf(x))


def _objective(attrs):
    """(scalar, maximize): what a batch's trials are judged by (Guild AI's
    default: minimize loss)."""
    objective = _field(attrs, "objective", dict)
    return (_field(objective, "scalar", str) or "loss",
            bool(objective.get("maximize")))


def _trial_loss(summary, scalar, maximize):
    """A trial's objective as a loss (lower is better), or None if the
    trial is bad: not completed, or its last value of scalar is missing
    or not finite."""
    val = summary["scalars"].get(scalar) if summary["status"] == \
        "completed" else None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or \
            not math.isfinite(val):
        return None
    return -val if maximize else val


_UNFINISHED = ("staged", "pending", "running")
# A script records its own exit, so a trial run by a queue can read as
# finished just before the queue has written the scalars of its last
# lines: a trial that finished without the objective is read again for a
# while, and counts as in flight meanwhile (it was taken as bad: in one
# proposal in ten with 4 in flight, which pushed the search away from
# good trials).
_LATE_SCALARS_US = 30 * 1000000


def _scalars_may_come(trial, scalar, now):
    """True if trial (a summary) completed lately without scalar: its
    watcher, another process, may not have written it yet."""
    return trial["status"] == "completed" and \
        scalar not in trial["scalars"] and \
        now - (trial["stopped"] or 0) < _LATE_SCALARS_US


def _reread_unfinished(trials, scalar):
    """trials (summaries) with those not finished, or finished lately
    without scalar, read again from their run directories; a trial whose
    directory is gone is dropped."""
    fresh = []
    now = _timestamp()
    for x in trials:
        if x["status"] in _UNFINISHED or _scalars_may_come(x, scalar, now):
            x = _run_summary(x["id"], os.path.join(_runs_dir(), x["id"]),
                             0, 0)
            if x is None:
                continue
        fresh.append(x)
    return fresh


def _best_trial(trials, scalar, maximize):
    """(trial number, summary) of the best trial, or None."""
    scored = [(loss, n, x) for n, x in enumerate(trials, 1)
              for loss in [_trial_loss(x, scalar, maximize)]
              if loss is not None]
    if not scored:
        return None
    _, n, x = min(scored, key=lambda t: (t[0], t[1]))
    return n, x


def _best_desc(trials, scalar, maximize):
    """`best loss 0.031 (trial 17)`, or `no loss yet`."""
    best = _best_trial(trials, scalar, maximize)
    if best is None:
        return "no %s yet" % scalar
    n, x = best
    return "best %s %s (trial %d)" % (scalar, _num(x["scalars"][scalar]),
                                      n)


def _tpe_next_flags(space, trials, attrs):
    """The flag values of the next trial, proposed from trials (the
    batch's trials so far, from the store). Each proposal draws from a
    generator seeded by the batch's seed and the trial's number, so a
    batch repeats, and a restarted batch goes on as if never stopped."""
    scalar, maximize = _objective(attrs)
    history, pending = [], set()
    # Trials run by queues: one whose objective may still come is in
    # flight, not bad (a sequential batch's own trials are read whole).
    queued, now = attrs.get("stage_trials"), _timestamp()
    for x in trials:
        point = [dim.encode(x["flags"].get(dim.name)) for dim in space]
        if None not in point:  # else the trial is outside a changed space
            if x["status"] in _UNFINISHED or (
                    queued and _scalars_may_come(x, scalar, now)):
                pending.add(len(history))
            history.append((point, _trial_loss(x, scalar, maximize)))
    rnd = random.Random("%s:%d" % (attrs.get("random_seed"), len(trials)))
    starts = (attrs.get("opt_flags") or {}).get("random-starts",
                                                 TPE_RANDOM_STARTS)
    point = _tpe_propose(space, history, rnd, starts, pending=pending)
    return {dim.name: dim.decode(x) for dim, x in zip(space, point)}


_TPE_POLL_SECONDS = (0.05, 2.0)  # waiting for results: first, longest


def _run_tpe_batch(batch_run, attrs):
    """Propose, make and run (or stage) trials until max_trials are made
    and finished; return the batch's exit status.

    Everything the model learns from is read from the store: the batch's
    trials are listed when it starts (a restarted batch picks up where it
    stopped, counting its trials still staged or running as in flight),
    and each round reads again those not finished. Sequentially, the
    batch runs its trials itself, one at a time; with --stage-trials it
    keeps up to in-flight trials staged or running for queues to take.
    """
    space = _tpe_space(attrs["proto"]["flags"])
    scalar, maximize = _objective(attrs)
    max_trials = attrs.get("max_trials") or DEFAULT_MAX_TRIALS
    staging = attrs.get("stage_trials")
    in_flight = (attrs.get("opt_flags") or {}).get(
        "in-flight", TPE_IN_FLIGHT) if staging else 1
    started = time.monotonic()
    poll, shown = _TPE_POLL_SECONDS[0], None
    trials = _batch_trial_summaries(batch_run)
    if len(trials) >= max_trials and not any(
            x["status"] in _UNFINISHED for x in trials):
        log.info("The batch has %d of %d trials: nothing to run "
                 "('guild run --restart %s -m N' goes on to N)",
                 len(trials), max_trials, batch_run.short_id)
    try:
        while True:
            trials = _reread_unfinished(trials, scalar)
            waiting = [x for x in trials if x["status"] in _UNFINISHED]
            if len(trials) < max_trials and len(waiting) < in_flight:
                trial = init_trial_run(batch_run, _tpe_next_flags(
                    space, trials, attrs))
                # Read in full at the top of the next round.
                trials.append({"id": trial.id, "status": "staged"})
                if staging:
                    log.info("Staging trial %s: %s", trial.id,
                             _trial_desc(trial))
                    _print_staged(trial, False)
                continue
            if not waiting:
                return 0
            progress = "trial %d/%d, %s%s" % (
                len(trials) - len(waiting) + 1, max_trials,
                _best_desc(trials, scalar, maximize),
                ", %d in flight" % len(waiting) if staging else "")
            if progress != shown:
                _progress(progress, started)
                shown, poll = progress, _TPE_POLL_SECONDS[0]
            staged = [x for x in waiting if x["status"] == "staged"]
            if staged and not staging:
                trial = Run(staged[0]["id"], os.path.join(
                    _runs_dir(), staged[0]["id"]))
                if not _run_trial(trial, batch_run, attrs):
                    return 1
                continue
            _sleep(poll)  # for queues, or another process, to finish trials
            poll = min(poll * 2, _TPE_POLL_SECONDS[1])
    except _StopRequested:
        log.info("Stopping batch")
        raise
    finally:  # the trial last made or run may have ended since it was read
        _log_tpe_finished(_reread_unfinished(trials, scalar), scalar,
                          maximize)


def _log_tpe_finished(trials, scalar, maximize):
    _log_batch_finished([x["status"] for x in trials])
    best = _best_trial(trials, scalar, maximize)
    if best:
        n, x = best
        log.info("Best trial %s (trial %d): %s %s (%s)", x["id"], n,
                 scalar, _num(x["scalars"][scalar]),
                 format_flags(x["flags"], sep=", "))
    elif any(x["status"] == "completed" for x in trials):
        log.warning("No trial printed a finite %s: each counted as bad, so "
                    "the search was random (-N/-X SCALAR name the "
                    "objective)", scalar)


# ---------------------------------------------------------------------------
## 15. The queue
# ---------------------------------------------------------------------------


def _claim_next_staged(gpus, verify=False, only=None, feeders=(),
                       skipped=None):
    """Claim the oldest staged run this queue may start, or None.

    Reads the staged index, not the store: the cost does not grow with
    the number of runs. With verify, an empty answer is checked against
    the run directories (the index is a cache) before it is believed.
    only, a set of run ids, limits the runs it may claim, but for the
    trials of batches in feeders. A staged batch that stages its trials
    for queues (_feeds_queues) is never claimed: the queue that ran it
    could not run its trials; its id goes into set skipped.
    """
    with Lock(RUN_STATUS, timeout=60):
        _ensure_index()
        _restage_dead_claims()
        run = _claim_from_index(gpus, only, feeders, skipped)
        if run is None and verify:
            _reconcile_index()
            run = _claim_from_index(gpus, only, feeders, skipped)
        return run


def _feeds_queues(attrs):
    """True if attrs are a tpe batch's that stages its trials as results
    come in (--stage-trials): queues run its trials, not the batch."""
    op = attrs.get("op") if isinstance(attrs, dict) else None
    return isinstance(op, dict) and op.get("kind") == "batch" and \
        op.get("name") == "tpe" and bool(attrs.get("stage_trials"))


_FEEDER_POLL_SECONDS = 1.0  # a worker's wait for a batch's next trial


def _any_unfinished(run_ids):
    """True if a run of run_ids is staged, pending or running."""
    return any(run_status(os.path.join(_runs_dir(), run_id)) in _UNFINISHED
               for run_id in run_ids)


def _claim_from_index(gpus, only=None, feeders=(), skipped=None):
    runs_dir = _runs_dir()
    for name in _index_names("staged"):
        run_id = _index_run_id(name)
        if not run_id:
            _index_drop("staged", name)
            continue
        if only is not None and run_id not in only and not feeders:
            continue
        run = Run(run_id, os.path.join(runs_dir, run_id))
        attrs = _read_record(run.guild_path(RUN_ATTRS))[0]
        if attrs is None:
            if _timestamp() - _index_created(name) > _ORPHAN_ENTRY_US:
                _index_drop("staged", name)
            continue
        if only is not None and run_id not in only and \
                attrs.get("batch") not in feeders:
            continue
        if _feeds_queues(attrs):
            if skipped is not None:
                skipped.add(run_id)
            continue
        status = run.status
        if status == "pending":
            continue
        if status != "staged":
            _index_drop("staged", name)
            continue
        run_gpus = attrs.get("gpus")
        if run_gpus is not None and str(run_gpus) != str(gpus):
            continue
        try:
            claimed = _claim_staged(run)
        except OSError as e:  # its claim cannot be written: damaged
            queue_log.error("Cannot claim %s: %s", run.id, e)
            _index_drop("staged", name)
            continue
        if claimed == "staged":
            return run
    return None


def _staged_run_ids():
    """Every staged run, oldest first, from the staged index."""
    with Lock(RUN_STATUS, timeout=60):
        _ensure_index()
        names = _index_names("staged")
    return [run_id for run_id in map(_index_run_id, names) if run_id and
            run_status(os.path.join(_runs_dir(), run_id)) == "staged"]


def _release_claim(run):
    """Drop this process's claim on a run it did not start."""
    claim = _read_json(run.guild_path(PENDING_CLAIM))
    if claim == _process_owner():
        _remove(run.guild_path(PENDING_CLAIM))


# A queue in a Slurm task works for one submission (section 16), named by
# GUILD_SLURM_SUBMISSION in the job script and kept in the queue's attrs
# as "slurm". Its record is under GUILD_HOME/slurm/SUB: submit.json says
# how, `runs` lists the runs it may start (one id a line). A pull worker
# (SUB) may start any of them; with SUB/OFFSET, array task i starts only
# line OFFSET + i. Tasks are started with --requeue: a task that Slurm starts
# again (SLURM_RESTART_COUNT) first stages again what it left unfinished.

SLURM_SUBMISSION_ENV = "GUILD_SLURM_SUBMISSION"
SUBMIT_RECORD = "submit.json"
SUBMIT_RUNS = "runs"


def _slurm_dir(*parts):
    return os.path.join(_guild_home(), "slurm", *parts)


def _read_submission(spec):
    """(record, run ids this queue may start) for submission spec.

    A task that cannot read the record runs on a machine that does not
    see the store (or sees another one at its path): StoreNotVisible.
    """
    sub, _, offset = str(spec).partition("/")
    record = _read_json(_slurm_dir(sub, SUBMIT_RECORD))
    try:
        with open(_slurm_dir(sub, SUBMIT_RUNS)) as f:
            run_ids = f.read().split()
    except OSError:
        record = None
    if not isinstance(record, dict):
        raise StoreNotVisible(
            "the run store %s is not visible from %s (%s is missing): "
            "GUILD_HOME must be on a filesystem that the submitting "
            "machine and the compute nodes share"
            % (_guild_home(), HOST, _slurm_dir(sub, SUBMIT_RECORD)))
    if offset:
        task = _slurm_task() or {}
        index = int(offset) + int(task.get("task") or 0)
        run_ids = run_ids[index:index + 1]
    return record, set(run_ids)


def _restage_left_behind(run_ids, task, max_requeues):
    """Stage again the runs of run_ids that an earlier incarnation of
    this Slurm task started and did not complete. Slurm restarting the
    task proves that incarnation dead, whatever its host's beat says."""
    with Lock(RUN_STATUS, timeout=60):
        for run_id in sorted(run_ids):
            run = Run(run_id, os.path.join(_runs_dir(), run_id))
            proc = _read_json(run.guild_path(PROC_ATTRS))
            was = proc.get("slurm") if isinstance(proc, dict) else None
            if not isinstance(was, dict) or (was.get("job"), was.get(
                    "task")) != (task["job"], task["task"]) or \
                    was.get("restart", 0) >= task["restart"]:
                continue
            status = run.status
            if status == "completed" or (
                    status == "running" and proc.get("host") == HOST):
                continue
            _restage_interrupted(run, "requeued by Slurm (%s)"
                                 % _slurm_task_name(was), max_requeues)


def _restage_interrupted(run, reason, max_requeues):
    """Stage an interrupted run again, unless it was max_requeues times
    already (then it stays as it ended); under the status lock."""
    if len(_run_attempts(run)) >= max_requeues:
        queue_log.warning("Run %s was interrupted %d times: it stays %s "
                          "(max-requeues)", run.id, max_requeues + 1,
                          run.status)
        return False
    _restage_in_place(run, reason)
    return True


def _requeue_task(task):
    """Ask Slurm to start this task again. Slurm sends the task SIGTERM
    as it does: everything is recorded by then, so it is ignored."""
    import subprocess
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    name = _slurm_task_name(task)
    try:
        proc = subprocess.run(["scontrol", "requeue", name],
                              stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, check=False)
    except OSError as e:
        queue_log.warning("Cannot requeue %s: %s", name, e)
        return
    if proc.returncode:
        queue_log.warning("Cannot requeue %s: %s", name,
                          proc.stdout.decode(errors="replace").strip())
    else:
        queue_log.info("Requeued Slurm task %s for the runs left", name)


def _end_damaged(run):
    """End a run whose damage kept it from running: error, not staged
    again (as far as the damage lets its files be written)."""
    try:
        if not os.path.lexists(run.guild_path(EXIT_ATTRS)):
            _write_json(run.guild_path(EXIT_ATTRS), {
                "exit_status": 1, "stopped": _timestamp(),
                "status": "error"})
        _mark_started(run)
    except OSError:
        pass


def _run_queue(queue_run, attrs):
    flags = attrs.get("flags") or {}
    poll = max(float(flags.get("poll-interval") or 10), 0.1)
    run_once = bool(flags.get("run-once"))
    ignore_running = bool(flags.get("ignore-running"))
    gpus = flags.get("gpus")
    only, max_requeues, task = None, DEFAULT_MAX_REQUEUES, _slurm_task()
    feeders, skipped, told = (), set(), set()
    if attrs.get("slurm"):
        record, only = _read_submission(attrs["slurm"])
        feeders = set(record.get("feeders") or ())
        max_requeues = record.get("max_requeues", max_requeues)
        _STATE.notice_grace = record.get("grace", _STATE.notice_grace)
        if task and task["restart"]:
            _restage_left_behind(only, task, max_requeues)
    queue_log.info("Processing staged runs")
    waiting = None
    last_verified = None
    started, done = time.monotonic(), 0
    while _STATE.notice_at is None:
        if not ignore_running and _other_runs_running():
            if waiting != "running":
                queue_log.info("Waiting for running runs")
                waiting = "running"
            _sleep(poll)
            continue
        # When idle, check the index against the run dirs now and then.
        verify = last_verified is None or (
            time.monotonic() - last_verified > INDEX_VERIFY_SECONDS)
        run = _claim_next_staged(gpus, verify, only, feeders, skipped)
        for batch_id in sorted(skipped - told):
            queue_log.warning(
                "Staged batch %s stages its trials for queues as results "
                "come in, so no queue starts it: start it with 'guild run "
                "--start %s' (-b: in the background)", batch_id,
                batch_id[:SHORT_ID_LEN])
            told.add(batch_id)
        if run is not None and _STATE.notice_at is not None:
            _release_claim(run)  # a queue that dies restages it too
            break
        if run is None:
            if run_once and not _any_unfinished(feeders):
                return 0
            if verify:
                last_verified = time.monotonic()
            if waiting != "staged":
                queue_log.info("Waiting for staged runs")
                waiting = "staged"
            # A batch that stages trials as results come in stages the
            # next as soon as one ends: look again sooner.
            _sleep(min(poll, _FEEDER_POLL_SECONDS) if feeders else poll)
            continue
        waiting = None
        last_verified = None
        if _showing_progress():  # counting the staged runs costs a listing
            _progress("queue: %d done, %d staged" % (
                done, len(_index_names("staged")) + 1), started)
        done += 1
        queue_log.info("Starting staged run %s", run.id)
        try:
            exit_status = _start_run(run, gpus=gpus)
        except _StopRequested as e:
            if e.signum != getattr(signal, "SIGUSR1", None):
                raise
            with Lock(RUN_STATUS, timeout=60):
                if run.status != "staged":  # else it never started
                    _restage_interrupted(run, "preempted (USR1%s)" % (
                        ", slurm " + _slurm_task_name(task) if task
                        else ""), max_requeues)
            break
        except (RunError, OSError) as e:
            if isinstance(e, OSError) and not str(e.filename).startswith(
                    run.dir + os.sep):
                raise  # the store or the disk failed, not this run
            queue_log.error("Cannot run %s: %s", run.id, e)
            _end_damaged(run)
            continue
        finally:
            _release_claim(run)
        if exit_status:
            queue_log.warning("Staged run %s exited with an error (%s)",
                              run.id, exit_status)
    queue_log.info("Preemption notice (USR1): claiming no more runs")
    left = only is None or any(_index_run_id(name) in only
                               for name in _index_names("staged"))
    if attrs.get("slurm") and task and left and (
            done > 1 or task["restart"] < max_requeues):
        _requeue_task(task)
    return 0


# ---------------------------------------------------------------------------
## 16. Slurm: staged runs on a cluster
# ---------------------------------------------------------------------------
#
# `guild slurm submit` puts staged runs on a Slurm cluster whose nodes
# share the run store. Each array task's job script execs a queue
# (run-once, ignore-running) that starts only the submission's runs
# (section 15), claiming them as local queues do: exactly once, at the
# cost of a local queue per run. guild drives sbatch, squeue, scontrol and
# scancel, never sacct (many clusters keep no accounting).
#
#   GUILD_HOME/slurm/SUB/submit.json    the submission: options, job ids
#   GUILD_HOME/slurm/SUB/runs           its runs, one id a line
#   GUILD_HOME/slurm/SUB/job-K.sh       the job script of array K
#   GUILD_HOME/slurm/SUB/JOB_TASK.out   what each task printed

SLURM_INSTALL = ("install Slurm's client commands (Debian and Ubuntu: "
                 "apt-get install slurm-client) or run guild on a login "
                 "node of the cluster")
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's own default
DEFAULT_SLURM_WORKERS = 4
DEFAULT_SIGNAL_BEFORE = 120
# Filesystems only their own machine sees.
LOCAL_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs",
                     "tmpfs", "overlay", "ramfs", "apfs", "hfs", "ntfs")
# Options passed to sbatch as they are: submit option -> sbatch option.
SBATCH_PASS_THROUGH = ("partition", "account", "qos", "time",
                       "cpus-per-task", "gpus-per-task", "mem",
                       "dependency")


def _slurm(args, check=True):
    """Run a Slurm client command; return its stdout (and, without
    check, its exit code first). A missing command is a SlurmError that
    says what to install."""
    import subprocess
    try:
        proc = subprocess.run(args, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise SlurmError("%s not found: %s" % (args[0], SLURM_INSTALL))
    out = proc.stdout.decode(errors="replace")
    if not check:
        return proc.returncode, out
    if proc.returncode:
        raise SlurmError("%s failed: %s" % (" ".join(args[:2]), (
            proc.stderr.decode(errors="replace").strip() or out.strip()
            or "exit %d" % proc.returncode)))
    return out


def _max_array_size():
    """The cluster's MaxArraySize (array indexes stay below it)."""
    out = _slurm(["scontrol", "show", "config"])
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else DEFAULT_MAX_ARRAY_SIZE


def _slurm_arrays(n_runs, per_run, workers, max_array_size):
    """The arrays of a submission of n_runs runs: [(offset, tasks)].

    Pull workers make one array of min(workers, n_runs) tasks; a run per
    task makes as many arrays as MaxArraySize requires (indexes run from
    0 to MaxArraySize - 1), never one job per run.
    """
    size = max(max_array_size - 1, 1)
    if not per_run:
        return [(0, max(min(workers, n_runs, size), 1))]
    return [(offset, min(size, n_runs - offset))
            for offset in range(0, n_runs, size)]


def _slurm_job_script(sub, opts, offset, tasks, after=None):
    """The job script of one array of submission sub. opts are submit's
    options (a dict); after, the job id this array waits for."""
    per_run = opts.get("per_run")
    array = "0-%d" % (tasks - 1)
    if opts.get("max_running"):
        array += "%%%d" % opts["max_running"]
    out = os.path.join(_slurm_dir(sub).replace("%", "%%"), "%A_%a.out")
    lines = [
        "#!/bin/bash",
        "# guild slurm submit %s: %s" % (sub, (
            "runs %d-%d of %d, one per task" % (
                offset + 1, offset + tasks, opts["runs"]) if per_run else
            "%d workers pulling %d runs" % (tasks, opts["runs"]))),
        "#SBATCH --job-name=%s" % (opts.get("job_name") or "guild-" + sub),
        "#SBATCH --array=%s" % array,
        "#SBATCH --output=%s" % out,
        "#SBATCH --open-mode=append",
        "#SBATCH --requeue",
    ]
    if opts.get("time"):
        lines.append("#SBATCH --signal=B:USR1@%d" % opts["signal_before"])
    dependency = ",".join(x for x in (
        opts.get("dependency"), after and "afterany:%s" % after) if x)
    for name in SBATCH_PASS_THROUGH:
        val = dependency if name == "dependency" else opts.get(
            name.replace("-", "_"))
        if val:
            lines.append("#SBATCH --%s=%s" % (name, val))
    lines += ["#SBATCH %s" % arg for arg in opts.get("sbatch_args") or ()]
    lines += ["", "export GUILD_HOME=%s" % _shell_quote(_guild_home()),
              "export %s=%s" % (SLURM_SUBMISSION_ENV, "%s/%d" % (
                  sub, offset) if per_run else sub)]
    lines += opts.get("setup") or ()
    lines.append("exec %s %s run queue run-once=yes ignore-running=yes -y"
                 % (_shell_quote(opts["python"]),
                    _shell_quote(opts["guild_py"])))
    return "\n".join(lines) + "\n"


def _shell_quote(s):
    return s if re.match(r"^[\w@%+=:,./-]+$", s) else \
        "'" + s.replace("'", "'\"'\"'") + "'"


def _store_mount(path):
    """(mount point, filesystem type, options) of the filesystem that
    holds path, from /proc/mounts; None where there is no /proc/mounts."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:4] for line in f if line.strip()]
    except OSError:
        return None
    path = os.path.realpath(path)
    best = None
    for point, fstype, options in mounts:
        point = point.replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and (
                best is None or len(point) >= len(best[0])):
            best = (point, fstype, options.split(","))
    return best


def _store_findings(home):
    """What the store's filesystem gives a cluster: [(level, text)], level
    'ok', 'warning' or 'error'."""
    found = []
    existing = home
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    mount = _store_mount(existing)
    if mount is None:
        found.append(("warning", "cannot tell the filesystem of %s (no "
                      "/proc/mounts)" % home))
    else:
        point, fstype, options = mount
        where = "%s on %s (%s)" % (home, point, fstype)
        if fstype in LOCAL_FILESYSTEMS:
            found.append(("warning", "%s is a local filesystem: only jobs "
                          "on this machine see the store" % where))
        elif fstype == "lustre" and "noflock" in options:
            found.append(("error", "%s is mounted noflock: guild's file "
                          "locks fail there (mount it flock)" % where))
        elif fstype == "beegfs" or "localflock" in options:
            found.append(("ok", "%s: file locks hold per node only; "
                          "claims are made with link(2), so each run "
                          "still starts once" % where))
        else:
            found.append(("ok", "%s is shared (%s)" % (where, fstype)))
    probe = os.path.join(existing, ".guild-link-probe-%s" % mkid()[:8])
    try:
        with open(probe, "w"):
            pass
        os.link(probe, probe + ".link")
        os.remove(probe + ".link")
        found.append(("ok", "hard links work: claims are atomic"))
    except OSError as e:
        found.append(("warning", "no hard links (%s): claims fall back to "
                      "O_EXCL, atomic on NFSv3 and later only"
                      % (e.strerror or e)))
    finally:
        _remove(probe)
    return found


def _submission_ids():
    """The submissions in the store, oldest first."""
    try:
        names = os.listdir(_slurm_dir())
    except OSError:
        return []
    records = []
    for name in names:
        record = _read_json(_slurm_dir(name, SUBMIT_RECORD))
        if isinstance(record, dict):
            records.append((record.get("created") or 0, name))
    return [name for _, name in sorted(records)]


def _submission(spec=None):
    """(id, record) of the submission spec names: its id (or a prefix),
    one of its jobs, JOB_TASK; or the newest."""
    ids = _submission_ids()
    if not ids:
        raise SlurmError("no Slurm submissions in %s" % _guild_home())
    if spec is None:
        sub = ids[-1]
        return sub, _read_json(_slurm_dir(sub, SUBMIT_RECORD))
    job = str(spec).partition("_")[0]
    found = []
    for sub in ids:
        record = _read_json(_slurm_dir(sub, SUBMIT_RECORD)) or {}
        if sub.startswith(str(spec)) or job in [
                str(a.get("job")) for a in record.get("arrays") or ()]:
            found.append((sub, record))
    if len(found) != 1:
        raise SlurmError("%s Slurm submission or job matches '%s'"
                         % ("no" if not found else "more than one", spec))
    return found[0]


def _submission_runs(sub):
    try:
        with open(_slurm_dir(sub, SUBMIT_RUNS)) as f:
            return f.read().split()
    except OSError:
        return []


def _slurm_tasks(job_ids):
    """{job id: [(task, state, reason, node)]} from one squeue call; jobs
    Slurm no longer shows are missing."""
    if not job_ids:
        return {}
    code, out = _slurm(["squeue", "-h", "-r", "-t", "all", "--me",
                        "-o", "%F|%K|%T|%r|%N"], check=False)
    if code:
        raise SlurmError("squeue failed (exit %d): is the cluster up?"
                         % code)
    wanted = {str(j) for j in job_ids}
    tasks = {}
    for line in out.splitlines():
        fields = line.split("|")
        if len(fields) == 5 and fields[0] in wanted:
            tasks.setdefault(fields[0], []).append(tuple(fields[1:]))
    return tasks


ACTIVE_SLURM_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING",
                       "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                       "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING",
                       "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT")


def _submission_status(sub, record, tasks, statuses):
    """The lines `slurm status` shows for one submission."""
    arrays = record.get("arrays") or []
    lines = ["%s  %s  %s, %d run%s%s" % (
        sub, _format_time(record.get("created")),
        "a run per task" if record.get("per_run") else
        "%d pull workers" % record.get("workers", 0),
        len(statuses), "" if len(statuses) == 1 else "s",
        " (with the trials %s staged later)" % " and ".join(
            "batch %s" % x[:SHORT_ID_LEN] for x in record["feeders"])
        if record.get("feeders") else "")]
    launch_failed = False
    for array in arrays:
        job = str(array.get("job"))
        counts = {}
        for _task, state, reason, _node in tasks.get(job, ()):
            key = state.lower() + (" (%s)" % reason if state == "PENDING"
                                   and reason not in ("None", "") else "")
            counts[key] = counts.get(key, 0) + 1
            launch_failed |= reason == "JobLaunchFailure"
        lines.append("  job %s: %s" % (job, ", ".join(
            "%d %s" % (n, k) for k, n in sorted(counts.items()))
            or "done (no longer shown by squeue)"))
    counts = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    lines.append("  runs: %s" % ", ".join(
        "%d %s" % (counts[s], s) for s in STATUS_FILTERS if s in counts))
    if launch_failed:
        lines.append("  tasks failed to start (JobLaunchFailure): can the "
                     "nodes write %s? The store must be shared."
                     % _slurm_dir(sub))
    return lines


def _submission_active(record, tasks):
    return any(state in ACTIVE_SLURM_STATES
               for a in record.get("arrays") or ()
               for _t, state, _r, _n in tasks.get(str(a.get("job")), ()))


def _run_statuses(run_ids):
    """{run id: status} of run_ids, from the listing cache."""
    wanted = set(run_ids)
    return {x["id"]: x["status"] for x in run_summaries()
            if x["id"] in wanted}


def _slurm_submit(run_ids, opts, dry_run=False, feeders=()):
    """Submit run_ids (staged, oldest first) to Slurm as opts (submit's
    options, a dict) say; return the submission's id and record. With
    dry_run, print the job scripts and sbatch commands and submit nothing.
    The workers also take the trials that batches feeders stage later,
    and wait for them while those batches run.
    """
    if not dry_run and not shutil.which("sbatch"):
        raise SlurmError("sbatch not found: %s" % SLURM_INSTALL)
    # Slurm's default MaxArraySize unless more is needed: one scontrol
    # call less per submission (a site that lowered it refuses the array,
    # and the error says what to do).
    max_array_size = opts.get("max_array_size") or DEFAULT_MAX_ARRAY_SIZE
    if not opts.get("max_array_size") and opts.get("per_run") and len(
            run_ids) >= max_array_size and shutil.which("scontrol"):
        max_array_size = _max_array_size()
    sub = mkid()[:SHORT_ID_LEN]
    arrays = _slurm_arrays(len(run_ids), opts.get("per_run"),
                           opts["workers"], max_array_size)
    opts = dict(opts, runs=len(run_ids))
    record = {
        "id": sub, "created": _timestamp(), "runs": len(run_ids),
        "per_run": bool(opts.get("per_run")),
        "workers": 0 if opts.get("per_run") else arrays[0][1],
        "max_requeues": opts["max_requeues"],
        "grace": max(opts["signal_before"] - 15, 5) if opts.get("time")
        else PREEMPT_GRACE_SECONDS,
        "options": {k: v for k, v in sorted(opts.items()) if v},
        "arrays": [{"offset": o, "tasks": n} for o, n in arrays]}
    if feeders:
        record["feeders"] = sorted(feeders)
    scripts = [_slurm_job_script(sub, opts, o, n) for o, n in arrays]
    paths = [_slurm_dir(sub, "job-%d.sh" % k) for k in range(len(arrays))]
    if dry_run:
        for k, (path, script) in enumerate(zip(paths, scripts)):
            print("# sbatch --parsable%s %s" % (
                " --dependency=afterany:<job of %s>" % paths[k - 1]
                if k and opts.get("max_running") else "", path))
            print(script)
        return sub, record
    _ensure_dir(_slurm_dir(sub))
    _write_text(_slurm_dir(sub, SUBMIT_RUNS), "".join(
        run_id + "\n" for run_id in run_ids))
    for path, script in zip(paths, scripts):
        _write_text(path, script)
    _write_json(_slurm_dir(sub, SUBMIT_RECORD), record)  # tasks look for it
    previous = None
    for array, path in zip(record["arrays"], paths):
        cmd = ["sbatch", "--parsable"]
        if previous and opts.get("max_running"):  # K at a time in all
            cmd.append("--dependency=%s" % ",".join(x for x in (
                opts.get("dependency"), "afterany:" + previous) if x))
        array["submitted"] = _timestamp()
        try:
            out = _slurm(cmd + [path])
        except SlurmError as e:
            if "array" not in str(e).lower():
                raise
            raise SlurmError("%s\nThe cluster's MaxArraySize may be below "
                             "%d: see 'scontrol show config', and give "
                             "--max-array-size" % (e, array["tasks"] + 1))
        array["job"] = previous = out.strip().split(";")[0]
        _write_json(_slurm_dir(sub, SUBMIT_RECORD), record)
    return sub, record


# ---------------------------------------------------------------------------
## 17. Results: compare
# ---------------------------------------------------------------------------

COMPARE_BASE_COLS = ("run", "operation", "started", "time", "status",
                     "label")
# What `.NAME` column specs name: the base columns and these.
COMPARE_ATTRS = COMPARE_BASE_COLS + (
    "id", "created", "stopped", "exit_status", "batch", "step", "tags",
    "comments", "marked")
SCALAR_QUALIFIERS = ("last", "first", "min", "max", "avg", "total",
                     "count")
SYSTEM_SCALAR_PREFIX = "sys/"


def compare_rows(summaries, all_scalars=False):
    """(columns, rows) comparing runs: the base columns, every flag, the
    step of the last scalar, then the last value of every scalar (but
    system ones, `sys/...` printed or an event file's tag, in whatever
    directory, unless all_scalars); a row is a dict, None
    where a run lacks a column. Times are seconds; started is
    `YYYY-MM-DD HH:MM:SS`.
    """
    flag_names = sorted({n for x in summaries for n in x["flags"]})
    run_scalars = [_compare_scalars(x["scalars"]) for x in summaries]
    scalar_names = sorted({n for scalars in run_scalars for n in scalars
                           if all_scalars or not n.rpartition("#")[2]
                           .startswith(SYSTEM_SCALAR_PREFIX)})
    step_cols = ["step"] if scalar_names and "step" not in flag_names \
        else []
    taken = set(COMPARE_BASE_COLS) | set(flag_names) | set(step_cols)
    scalar_cols = [("scalar:" + n if n in taken else n, n)
                   for n in scalar_names]
    columns = list(COMPARE_BASE_COLS) + flag_names + step_cols + [
        c for c, _ in scalar_cols]
    now = _timestamp()
    rows = []
    for x, scalars in zip(summaries, run_scalars):
        row = {name: _attr_value(x, name, now) for name in
               COMPARE_BASE_COLS}
        for name in flag_names:
            row[name] = x["flags"].get(name)
        if step_cols:
            row["step"] = x.get("step")
        for col, name in scalar_cols:
            row[col] = scalars.get(name)
        rows.append(row)
    return columns, rows


def _compare_scalars(scalars):
    """A run's scalars by column name: an event file's `DIR#tag` is
    `tag` where the run has no other scalar of that tag (torch writes
    to `runs/<date>_<host>/`: one column for all runs); a tag in several
    directories (Keras' train/ and validation/) keeps each `DIR#tag`."""
    tags = {}
    for key in scalars:
        tag = key.rpartition("#")[2]
        tags[tag] = tags.get(tag, 0) + 1
    return {key if tags[key.rpartition("#")[2]] > 1
            else key.rpartition("#")[2]: val
            for key, val in scalars.items()}


def _attr_value(x, name, now):
    """Attribute name (one of COMPARE_ATTRS) of run summary x."""
    if name == "run":
        return x["id"][:SHORT_ID_LEN]
    if name == "operation":
        return x["op"]
    if name in ("started", "created", "stopped"):
        return _format_time(x[name]) or None
    if name == "time":
        started = x["started"]
        end = x["stopped"] or (now if x["status"] == "running" else None)
        return round((end - started) / 1e6, 3) if started and end else None
    if name in ("tags", "comments"):
        return " ".join(x.get(name) or ()) or None
    return x.get(name)


def _parse_colspec(text):
    """A compare column spec as a dict (header, kind, name, qualifier,
    step): `=flag`, `.attribute`, `[QUALIFIER] scalar [step]`, any of
    them followed by `as HEADER`. A bare name is a column of the table
    if there is one (`lr` is the flag lr), else a scalar."""
    spec, _, header = text.partition(" as ")
    words = spec.split()
    header = header.strip().strip("'\"")
    if not words:
        raise UsageError("empty column spec in '%s'" % text)
    if words[0].startswith(("=", ".")) and len(words) == 1:
        kind = "flag" if words[0][0] == "=" else "attr"
        name = words[0][1:]
        if kind == "attr" and name not in COMPARE_ATTRS:
            raise UsageError("unknown attribute '.%s' (attributes: %s)"
                             % (name, ", ".join(COMPARE_ATTRS)))
        return {"header": header or name, "kind": kind, "name": name,
                "qualifier": None, "step": False}
    qualifier = words.pop(0) if len(words) > 1 and \
        words[0] in SCALAR_QUALIFIERS else None
    step = len(words) > 1 and words[-1] == "step"
    if step:
        words.pop()
    if len(words) != 1:
        raise UsageError("invalid column spec '%s': use =FLAG, .ATTR or "
                         "[last|first|min|max|avg|total|count] SCALAR "
                         "[step], then optionally 'as HEADER'" % text)
    kind = "scalar" if qualifier or step else "column"
    return {"header": header or " ".join(spec.split()), "kind": kind,
            "name": words[0], "qualifier": qualifier, "step": step}


def _parse_colspecs(text):
    return [_parse_colspec(part) for part in text.split(",")
            if part.strip()]


def _colspec_values(spec, summaries, columns, rows, runs_dir):
    """The value of column spec for each run (summaries and their rows
    from compare_rows, in order)."""
    kind, name = spec["kind"], spec["name"]
    if kind == "column" and name in columns:
        return [row.get(name) for row in rows]
    if kind == "flag":
        return [x["flags"].get(name) for x in summaries]
    if kind == "attr":
        now = _timestamp()
        return [_attr_value(x, name, now) for x in summaries]
    if kind == "column":
        if not any(name in x["scalars"] for x in summaries):
            raise UsageError("unknown column '%s' (columns: %s)"
                             % (name, ", ".join(columns)))
        return [x["scalars"].get(name) for x in summaries]
    return [_scalar_value(read_scalars(os.path.join(runs_dir, x["id"])),
                          name, spec["qualifier"] or "last", spec["step"])
            for x in summaries]


def _scalar_value(records, key, qualifier, step):
    """A run's scalar key reduced by qualifier (last, min, ...), or with
    step the step of that value; None if the run never logged key."""
    found = [(val, st) for k, val, st, _ts in records if k == key]
    if not found:
        return None
    if qualifier in ("count", "total", "avg"):
        if step:
            return found[-1][1]
        vals = [v for v, _ in found]
        return {"count": len(vals), "total": sum(vals),
                "avg": sum(vals) / len(vals)}[qualifier]
    pick = {"last": found[-1], "first": found[0],
            "min": min(found, key=lambda f: f[0]),
            "max": max(found, key=lambda f: f[0])}[qualifier]
    return pick[1] if step else pick[0]


def compare_table(summaries, runs_dir, cols=None, strict_cols=None,
                  all_scalars=False, skip_core=False, skip_unchanged=False):
    """(columns, rows) as `guild compare` shows them: compare_rows, with
    cols (column specs, comma-separated) added, or only strict_cols;
    skip_core drops the base columns but run, skip_unchanged the
    columns whose value is the same in every row (of two or more)."""
    columns, rows = compare_rows(summaries, all_scalars)
    if cols and strict_cols:
        raise UsageError("--cols and --strict-cols cannot be used "
                         "together")
    if strict_cols:
        specs = _parse_colspecs(strict_cols)
        shown = [{"run": row["run"]} for row in rows]
        extra = _colspec_columns(specs, summaries, columns, rows, runs_dir,
                                 shown)
        columns, rows = ["run"] + [c for c in extra if c != "run"], shown
    elif cols:
        specs = _parse_colspecs(cols)
        extra = _colspec_columns(specs, summaries, columns, rows, runs_dir,
                                 rows)
        columns += [c for c in extra if c not in columns]
    if skip_core:
        columns = [c for c in columns if c == "run" or
                   c not in COMPARE_BASE_COLS]
    if skip_unchanged and len(rows) > 1:
        columns = [c for c in columns if c == "run" or
                   len({json.dumps(r.get(c), sort_keys=True)
                        for r in rows}) > 1]
    return columns, rows


def _colspec_columns(specs, summaries, columns, rows, runs_dir, into):
    """Add each spec's values to the rows into (a value already there
    stays, as Guild AI merges columns of one name); return the specs'
    headers. columns and rows are compare_rows's."""
    headers = []
    for spec in specs:
        values = _colspec_values(spec, summaries, columns, rows, runs_dir)
        for row, val in zip(into, values):
            if row.get(spec["header"]) is None:
                row[spec["header"]] = val
        headers.append(spec["header"])
    return headers


def _sort_rows(rows, column, descending):
    """Rows sorted by column; rows lacking it (or nan) go last."""
    def missing(row):
        val = row.get(column)
        return val is None or (isinstance(val, float) and val != val)

    def key(row):
        val = row[column]
        return (0, val, "") if isinstance(val, (int, float)) else \
            (1, 0, str(val))
    present = sorted((r for r in rows if not missing(r)), key=key,
                     reverse=descending)
    return present + [r for r in rows if missing(r)]


def _write_compare_csv(out, columns, rows):
    """Write compare's columns and rows to stream out as CSV."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([_csv_cell(r.get(c)) for c in columns])


def _csv_cell(val):
    if val is None:
        return ""
    if isinstance(val, float):
        return repr(val)
    return str(val)  # True/False for booleans, as pandas reads them


def _table_cell(col, val):
    if val is None:
        return ""
    if col == "time":
        secs = int(val)
        return "%d:%02d:%02d" % (secs // 3600, secs // 60 % 60, secs % 60)
    if isinstance(val, float) and col not in COMPARE_BASE_COLS:
        return "%.6g" % val
    if isinstance(val, (bool, int, float, list, dict)) or val is None:
        return encode_flag_val(val)
    return str(val)


# ---------------------------------------------------------------------------
## 18. The web view
# ---------------------------------------------------------------------------
#
# `guild view` serves the store read-only over HTTP: pages rendered on the
# server (readable without JavaScript; plots are SVG), a little JavaScript
# that refreshes what is live, and the JSON the pages are built from. Only
# GET and HEAD; only files inside the directory of a run in the view.

VIEW_PAGE_ROWS = 100  # runs on one page of the listing
VIEW_OUTPUT_TAIL = 64 * 1024  # bytes of output a run page starts with
VIEW_OUTPUT_CHUNK = 1 << 20  # most bytes of output one poll returns
VIEW_MAX_FILES = 1000  # files listed on a run page
VIEW_SCALARS_KEPT = 64  # runs whose parsed scalars a view keeps
VIEW_POLL_MS = 2000
VIEW_PLOT_SIZE = (560, 240)
_VIEW_MARGIN = (64, 12, 12, 34)  # left, right, top, bottom
_VIEW_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
# Run files a browser shows: text as plain text, and these images.
_VIEW_TEXT_TYPES = {"application/json", "application/x-sh",
                    "application/x-yaml", "application/toml"}
_VIEW_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif"}
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
_VIEW_RUN_REF_RE = re.compile(r"^[A-Za-z0-9_\-]+$")

_VIEW_CSS = """\
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
header { background: #2b3a4a; padding: 8px 16px; }
header a { color: #fff; font-weight: bold; text-decoration: none; }
main { padding: 4px 16px 16px; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { padding: 3px 8px; border-bottom: 1px solid #ddd; text-align: left;
         vertical-align: top; }
th a { color: inherit; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.running { color: #1565c0; } .completed { color: #2e7d32; }
.error, .corrupt { color: #c62828; } .terminated { color: #ef6c00; }
.staged, .pending { color: #777; }
pre { background: #f5f5f5; padding: 8px; max-height: 32em; overflow: auto; }
.plots { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; } figcaption { font-weight: bold; }
svg text { font: 11px sans-serif; fill: #444; }
.legend span { display: inline-block; margin-right: 14px; }
.legend i { display: inline-block; width: 12px; height: 12px;
            margin-right: 4px; vertical-align: -1px; }
form.filters input[name] { width: 8em; }
form.filters input[type=checkbox] { width: auto; }
.note { color: #666; }
"""

# The runs page: fetch the same URL again and swap in its rows, keeping
# the boxes ticked, so status, time and scalars follow the runs.
_VIEW_RUNS_JS = """\
function refreshRuns() {
  fetch(location.href).then(r => r.text()).then(text => {
    const fresh = new DOMParser().parseFromString(text, "text/html");
    const body = document.querySelector("table.runs tbody");
    const freshBody = fresh.querySelector("table.runs tbody");
    if (!body || !freshBody) return;
    const ticked = new Set(Array.from(
      body.querySelectorAll("input:checked"), box => box.value));
    body.innerHTML = freshBody.innerHTML;
    body.querySelectorAll("input").forEach(
      box => { box.checked = ticked.has(box.value); });
    document.getElementById("updated").textContent =
      "updated " + new Date().toLocaleTimeString();
  }).catch(() => {}).finally(() => setTimeout(refreshRuns, POLL_MS));
}
setTimeout(refreshRuns, POLL_MS);
"""

# A run page: append output as it comes while the run may still change,
# redraw its scalars and plots every fifth poll; reload once it ends, for
# its final scalars, plots and files.
_VIEW_RUN_JS = """\
let polls = 0;
function redrawScalars() {
  fetch(location.href).then(r => r.text()).then(text => {
    const fresh = new DOMParser().parseFromString(text, "text/html");
    const live = fresh.getElementById("live");
    if (live) document.getElementById("live").replaceWith(live);
  }).catch(() => {});
}
function followRun() {
  if (++polls % 5 === 0) redrawScalars();
  const out = document.getElementById("output");
  const status = document.getElementById("status");
  fetch(OUTPUT_URL + "?offset=" + out.dataset.offset).then(r => r.json())
    .then(data => {
      out.textContent += data.text;
      out.dataset.offset = data.offset;
      if (data.text) out.scrollTop = out.scrollHeight;
      if (data.status !== status.textContent) {
        status.textContent = data.status;
        status.className = data.status;
      }
      if (LIVE.includes(data.status)) setTimeout(followRun, POLL_MS);
      else location.reload();
    }).catch(() => setTimeout(followRun, POLL_MS));
}
setTimeout(followRun, POLL_MS);
"""

_LIVE_STATUSES = ("staged", "pending", "running")


class _NotFound(ViewError):
    """A URL naming nothing the view serves: answered with a 404 page."""

    http_status = 404


class _BadRequest(ViewError):
    """A URL with bad parameters: answered with a 400 page."""

    http_status = 400


class _View:
    """What one view server serves: the runs of runs_dir that where
    matches (only those whose ids are in only, if given). loopback says
    requests must name a loopback host (no DNS rebinding)."""

    def __init__(self, runs_dir, where=None, only=None, loopback=True):
        self.runs_dir = os.path.abspath(runs_dir)
        self.where = where or RunFilter()
        self.only = only
        self.loopback = loopback
        self._scalars = {}  # run dir: (file stat, records), newest last
        self._scalars_lock = threading.Lock()

    def scalars(self, run_dir):
        """read_scalars(run_dir), read again only when its files changed:
        a page that polls a run costs a stat of each."""
        signature = []
        for rel in [os.path.join(".guild", SCALARS_FILE)] + _event_files(
                run_dir):
            try:
                st = os.stat(os.path.join(run_dir, rel))
                signature.append((rel, st.st_mtime_ns, st.st_size,
                                  st.st_ino))
            except OSError:
                pass
        with self._scalars_lock:
            known = self._scalars.pop(run_dir, None)
        if known is None or known[0] != signature:
            known = (signature, read_scalars(run_dir))
        with self._scalars_lock:
            self._scalars[run_dir] = known
            while len(self._scalars) > VIEW_SCALARS_KEPT:
                del self._scalars[next(iter(self._scalars))]
        return known[1]


def _esc(text):
    """text for HTML content or a quoted attribute."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;")
            .replace(">", "&gt;").replace('"', "&quot;")
            .replace("'", "&#39;"))


def _json_safe(val):
    """val with nan and infinities as strings: JSON has no such numbers."""
    if isinstance(val, float) and (val != val or val in (
            float("inf"), float("-inf"))):
        return repr(val)
    if isinstance(val, dict):
        return {k: _json_safe(v) for k, v in val.items()}
    if isinstance(val, (list, tuple)):
        return [_json_safe(v) for v in val]
    return val


def _corrupt_summary(run_id):
    """A listing entry for a run directory whose attributes cannot be
    read: shown, so the user sees it, with nothing else to break on."""
    summary = dict.fromkeys(_SUMMARY_FIELDS)
    summary.update(id=run_id, op="?", kind=None, label="", status="corrupt",
                   flags={}, scalars={})
    return summary


def _sane_summary(x, runs_dir):
    """x, or a corrupt entry for a run whose run.json is damaged (the
    store lists it, its operation unknown: see _run_summary)."""
    if x["op"] == "?" and _read_record(os.path.join(
            runs_dir, x["id"], ".guild", RUN_ATTRS))[1]:
        return _corrupt_summary(x["id"])
    return x


def _view_summaries(view):
    """The view's runs, newest first (damaged ones, undated, last)."""
    listed = [_sane_summary(x, view.runs_dir)
              for x in run_summaries(view.runs_dir)]
    return [x for x in listed if view.where.matches(x) and (
        view.only is None or x["id"] in view.only)]


def _param(params, name, default=""):
    values = params.get(name)
    return values[-1] if values else default


def _int_param(params, name, default):
    text = _param(params, name)
    if not text:
        return default
    if not text.isdigit():
        raise _BadRequest("%s must be a whole number, not '%s'"
                          % (name, text))
    return int(text)


def _page_filter(params):
    """The RunFilter of a runs page's own filter parameters."""
    statuses = [s for s in params.get("status", []) if s]
    unknown = [s for s in statuses if s not in STATUS_FILTERS]
    if unknown:
        raise _BadRequest("unknown status '%s'" % unknown[0])
    try:
        return RunFilter(operation=_param(params, "op") or None,
                         label=_param(params, "label") or None,
                         unlabeled=_param(params, "unlabeled") == "1",
                         statuses=statuses,
                         started=_param(params, "started") or None,
                         batch=_param(params, "batch") or None)
    except UsageError as e:
        raise _BadRequest(str(e))


def _view_find(view, ref, summaries=None):
    """The summary of the view's run whose id is or starts with ref."""
    if not _VIEW_RUN_REF_RE.match(ref):
        raise _NotFound("no run '%s'" % ref)
    summaries = _view_summaries(view) if summaries is None else summaries
    matches = [x for x in summaries if x["id"] == ref] or [
        x for x in summaries if x["id"].startswith(ref)]
    if len(matches) != 1:
        raise _NotFound("no run '%s'" % ref if not matches else
                        "'%s' matches %d runs" % (ref, len(matches)))
    return matches[0]


def _view_selected(view, params):
    """The summaries of the runs named by `runs` parameters (repeated or
    comma-separated), in listing order; every run in the view if none."""
    summaries = _view_summaries(view)
    refs = [ref for value in params.get("runs", []) for ref in
            value.split(",") if ref]
    if not refs:
        return summaries
    wanted = {_view_find(view, ref, summaries)["id"] for ref in refs}
    return [x for x in summaries if x["id"] in wanted]


def _view_compared(view, params):
    """(selected summaries, columns, rows) of the compare page, its CSV
    and /api/compare: what `guild compare` shows for those runs (batch
    runs left out unless include_batch=1)."""
    selected = _view_selected(view, params)
    if _param(params, "include_batch") != "1":
        selected = [x for x in selected if x["kind"] != "batch"]
    # The table from the store's own entries, as `guild compare` has them
    # (the view marks damaged runs "corrupt" in its pages only).
    store = {x["id"]: x for x in run_summaries(view.runs_dir)}
    columns, rows = compare_table([store.get(x["id"], x) for x in selected],
                                  view.runs_dir)
    return selected, columns, rows


def _view_listing(view, params):
    """(page of (summary, compare row) pairs, total) for the runs page
    and /api/runs: page filters, then sort, then offset and limit."""
    where = _page_filter(params)
    summaries = [x for x in _view_summaries(view) if where.matches(x)]
    offset = _int_param(params, "offset", 0)
    limit = _int_param(params, "limit", VIEW_PAGE_ROWS)
    sort = _param(params, "sort")
    if not sort:  # rows only for the page: a row needs only its run
        page = summaries[offset:offset + limit]
        return list(zip(page, compare_rows(page)[1])), len(summaries)
    rows = compare_rows(summaries)[1]
    by_row = {id(row): x for x, row in zip(summaries, rows)}
    rows = _sort_rows(rows, sort, _param(params, "desc") == "1")
    return ([(by_row[id(row)], row) for row in rows[offset:offset + limit]],
            len(summaries))


def _scalars_text(scalars):
    return " ".join("%s=%s" % (k, _table_cell(k, v))
                    for k, v in sorted(scalars.items()))


def _listing_json(x, row):
    return {"id": x["id"], "operation": x["op"], "started": row["started"],
            "time": row["time"], "status": x["status"], "label": x["label"],
            "batch": x["batch"], "flags": x["flags"],
            "scalars": x["scalars"]}


# Pages ------------------------------------------------------------------


def _html_page(title, body, script=""):
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width\">"
            "<title>%s - guild view</title><style>%s</style></head><body>"
            "<header><a href=\"/\">guild view</a></header><main>%s</main>%s"
            "</body></html>\n" % (
                _esc(title), _VIEW_CSS, body,
                "<script>%s</script>" % script if script else ""))


def _query(params, **changes):
    """A query string: params with changes (None removes a name)."""
    from urllib.parse import urlencode
    merged = {k: v for k, v in params.items() if k not in changes}
    merged.update({k: [str(v)] for k, v in changes.items()
                   if v is not None})
    text = urlencode(merged, doseq=True)
    return "?" + text if text else "?"


def _status_cell(status):
    return "<span class=\"%s\">%s</span>" % (_esc(status), _esc(status))


def _runs_page(view, params):
    page, total = _view_listing(view, params)
    sort, desc = _param(params, "sort"), _param(params, "desc") == "1"
    heads = []
    for col in COMPARE_BASE_COLS + ("flags", "scalars"):
        if col in ("flags", "scalars"):
            heads.append("<th>%s</th>" % col)
            continue
        flip = "1" if col == sort and not desc else None
        mark = (" &#9660;" if desc else " &#9650;") if col == sort else ""
        heads.append("<th><a href=\"%s\">%s</a>%s</th>" % (
            _esc(_query(params, sort=col, desc=flip, offset=None)), col,
            mark))
    rows = []
    for x, row in page:
        rows.append(
            "<tr id=\"run-%s\"><td><input type=\"checkbox\" name=\"runs\" "
            "value=\"%s\" aria-label=\"select\"></td>"
            "<td class=\"run\"><a href=\"/runs/%s\">%s</a></td>"
            "<td class=\"operation\">%s</td><td class=\"started\">%s</td>"
            "<td class=\"time num\">%s</td><td class=\"status\">%s</td>"
            "<td class=\"label\">%s</td><td class=\"flags\">%s</td>"
            "<td class=\"scalars\">%s</td></tr>" % (
                x["id"], x["id"], x["id"], row["run"], _esc(x["op"]),
                _esc(row["started"] or ""),
                _table_cell("time", row["time"]), _status_cell(x["status"]),
                _esc(x["label"]), _esc(format_flags(x["flags"])),
                _esc(_scalars_text(x["scalars"]))))
    offset = _int_param(params, "offset", 0)
    limit = _int_param(params, "limit", VIEW_PAGE_ROWS)
    pages = "%d runs" % total
    if total > len(page):
        pages = "runs %d-%d of %d" % (offset + 1, offset + len(page), total)
        if offset > 0:
            pages += " <a rel=\"prev\" href=\"%s\">previous</a>" % _esc(
                _query(params, offset=max(offset - limit, 0) or None))
        if offset + limit < total:
            pages += " <a rel=\"next\" href=\"%s\">next</a>" % _esc(
                _query(params, offset=offset + limit))
    status_opts = "".join(
        "<option%s>%s</option>" % (
            " selected" if s in params.get("status", []) else "", s)
        for s in ("",) + STATUS_FILTERS)
    body = (
        "<h1>Runs</h1><form class=\"filters\" method=\"get\" action=\"/\">"
        "operation <input name=\"op\" value=\"%s\"> label <input "
        "name=\"label\" value=\"%s\"> started <input name=\"started\" "
        "value=\"%s\" placeholder=\"last 2 hours\"> status <select "
        "name=\"status\">%s</select> sort by <input name=\"sort\" "
        "value=\"%s\" placeholder=\"loss\"> <label>"
        "<input type=\"checkbox\" name=\"desc\" value=\"1\"%s> highest "
        "first</label> <button>Show</button></form>"
        "<form method=\"get\" action=\"/compare\"><p><span class=\"count\">"
        "%s</span> <button>Compare selected</button> <span id=\"updated\" "
        "class=\"note\"></span></p>"
        "<table class=\"runs\"><thead><tr><th></th>%s</tr></thead>"
        "<tbody>%s</tbody></table></form>" % (
            _esc(_param(params, "op")), _esc(_param(params, "label")),
            _esc(_param(params, "started")), status_opts, _esc(sort),
            " checked" if desc else "", pages,
            "".join(heads), "".join(rows)))
    return _html_page("Runs", body, "const POLL_MS = %d;\n%s" % (
        VIEW_POLL_MS, _VIEW_RUNS_JS))


def _run_files(run_dir, source_files):
    """[(path, size, is source)] of a run's files, .guild left out."""
    files = []
    for root, dirs, names in os.walk(run_dir):
        dirs.sort()
        if root == run_dir:
            dirs[:] = [d for d in dirs if d != ".guild"]
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, run_dir).replace(os.sep, "/")
            try:
                size = os.path.getsize(full)
            except OSError:
                continue
            files.append((rel, size, rel in source_files))
            if len(files) >= VIEW_MAX_FILES:
                return files
    return files


def _scalar_series(records):
    """{key: [(step, value)]} of scalar records, in order."""
    keys = {r[0] for r in records}
    if len(keys) <= 4:  # a comprehension a key beats one loop for all
        return {key: [(r[2], r[1]) for r in records if r[0] == key]
                for key in keys}
    series = {key: [] for key in keys}
    for key, val, step, _ts in records:
        series[key].append((step, val))
    return series


def _read_output(run, offset, limit):
    """(text, end offset) of a run's output from offset, at most limit
    bytes; a negative offset counts from the end."""
    try:
        with open(run.guild_path(OUTPUT_FILE), "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(size + offset, 0) if offset < 0 else min(offset,
                                                                 size)
            f.seek(start)
            data = f.read(limit)
    except OSError:
        return "", 0
    return data.decode("utf-8", "replace"), start + len(data)


def _run_page(view, ref, params):
    x = _view_find(view, ref)
    if x["status"] == "corrupt":
        return _html_page("Run %s" % x["id"][:SHORT_ID_LEN], (
            "<h1>Run %s</h1><p class=\"corrupt\">This run is corrupted: "
            "its attributes (.guild/%s) cannot be read.</p>" % (
                x["id"], RUN_ATTRS)))
    run = Run(x["id"], os.path.join(view.runs_dir, x["id"]))
    items = _run_info_items(run)
    attrs = "".join(
        "<tr><th>%s</th><td%s>%s</td></tr>" % (
            name, " id=\"status\" class=\"%s\"" % _esc(text)
            if name == "status" else "",
            "<a href=\"/runs/%s\">%s</a>" % (_esc(text), _esc(text))
            if name == "batch" else _esc(text))
        for name, text in items)
    flags = "".join("<tr><th>%s</th><td>%s</td></tr>" % (
        _esc(n), _esc(encode_flag_val(v))) for n, v in sorted(
            run.flags.items()))
    series = _scalar_series(view.scalars(run.dir))
    stats = _run_scalar_stats(run.dir)[0]
    scalars = "".join(
        "<tr><th>%s</th>%s<td class=\"num\">%s</td><td class=\"num\">%d"
        "</td></tr>" % (_esc(key), "".join(
            "<td class=\"num\">%s</td>" % _num(st[k])
            for k in ("last", "min", "max")), st["step"], st["count"])
        for key, st in sorted(stats.items()))
    log_y = _param(params, "log") == "1"
    plots = _plots_html([{"run": run.id, "name": run.short_id,
                          "color": _VIEW_COLORS[0], "series": series}],
                        log_y, params)
    text, end = _read_output(run, -VIEW_OUTPUT_TAIL, VIEW_OUTPUT_TAIL)
    source = set(run.get("sourcecode") or ())
    files = "".join(
        "<tr><td><a href=\"/runs/%s/files/%s\">%s</a></td><td class=\"num\">"
        "%d</td><td>%s</td></tr>" % (run.id, _esc(_quote_path(rel)),
                                     _esc(rel), size,
                                     "source" if is_source else "")
        for rel, size, is_source in _run_files(run.dir, source))
    trials = ""
    if x["kind"] == "batch":
        ids = [t["id"] for t in _view_summaries(view)
               if t["batch"] == run.id]
        trials = "<h2>Trials</h2><p>%d trials: <a href=\"/compare?runs=%s\">" \
                 "compare them</a></p>" % (len(ids), ",".join(
                     i[:SHORT_ID_LEN] for i in ids))
    body = (
        "<h1>%s <small>%s</small></h1><table class=\"attrs\">%s</table>"
        "<h2>Flags</h2><table class=\"flags\">%s</table>%s"
        "<div id=\"live\"><h2>Scalars</h2><table class=\"scalars\"><tr>"
        "<th>key</th><th>last</th><th>min</th><th>max</th><th>step</th>"
        "<th>count</th></tr>%s</table>%s</div><h2>Output</h2><pre "
        "id=\"output\" "
        "data-offset=\"%d\">%s</pre><h2>Files</h2><table class=\"files\">"
        "%s</table>" % (
            _esc(run.op_desc), run.short_id, attrs, flags, trials, scalars,
            plots, end, _esc(text), files))
    script = ""
    if x["status"] in _LIVE_STATUSES:
        script = "const POLL_MS = %d, LIVE = %s, OUTPUT_URL = \"%s\";\n%s" % (
            VIEW_POLL_MS, json.dumps(list(_LIVE_STATUSES)),
            "/api/runs/%s/output" % run.id, _VIEW_RUN_JS)
    return _html_page("%s %s" % (run.op_desc, run.short_id), body, script)


def _quote_path(rel):
    from urllib.parse import quote
    return quote(rel)


# Plots ------------------------------------------------------------------


def _nice_ticks(low, high, count=5):
    """About count round numbers from low to high."""
    span = high - low
    raw = span / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10)
                if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks = []
    tick = first
    while tick <= high + step * 1e-9:
        ticks.append(0.0 if abs(tick) < step * 1e-9 else tick)
        tick = first + len(ticks) * step
    return ticks


def _thin(points):
    """points cut into as many runs as the plot is pixels wide, keeping
    each run's lowest and highest in their order: a curve of 10,000
    steps keeps its shape in a tenth of the points."""
    width = VIEW_PLOT_SIZE[0]
    if len(points) <= 2 * width:
        return points
    size = -(-len(points) // width)
    ys = [p[1] for p in points]
    kept = []
    for start in range(0, len(points), size):
        chunk = ys[start:start + size]
        low, high = chunk.index(min(chunk)), chunk.index(max(chunk))
        kept += [points[start + i] for i in sorted({low, high})]
    return kept


def _finite(val):
    return (isinstance(val, (int, float)) and not isinstance(val, bool)
            and val == val and val not in (float("inf"), float("-inf")))


def _drawable(points, log_x, log_y):
    """The points a chart can place, in axis units: finite numbers, and
    above zero on a log axis."""
    try:  # finite sums: all finite (the usual case), with no filter
        clean = math.isfinite(math.fsum(map(operator.itemgetter(0), points))
                              + math.fsum(map(operator.itemgetter(1),
                                              points)))
    except (TypeError, OverflowError):  # a run without the value: None
        clean = False
    kept = points if clean else [(x, y) for x, y in points
                                 if _finite(x) and _finite(y)]
    if log_x:
        kept = [(math.log10(x), y) for x, y in kept if x > 0]
    if log_y:
        kept = [(x, math.log10(y)) for x, y in kept if y > 0]
    return kept


def _tick_text(val, log):
    return "%.4g" % (10 ** val if log else val)


def _svg_chart(series, x_title, log_x=False, log_y=False, scatter=False,
               x_labels=None):
    """An SVG chart of series [{"run", "name", "color", "points"}], points
    being [(x, y)]: a line per series, or dots (a scatter). x_labels
    {x: text} name the ticks of a category axis. What a chart cannot
    show (nan, infinities, values <= 0 on a log axis) is left out."""
    width, height = VIEW_PLOT_SIZE
    left, right, top, bottom = _VIEW_MARGIN
    drawn = [(s, _drawable(s["points"], log_x, log_y)) for s in series]
    head = ("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
            "height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">" % (
                width, height, width, height))
    drawn_points = [points for _, points in drawn if points]
    if not drawn_points:
        return head + ("<text x=\"%d\" y=\"%d\">no values to plot</text>"
                       "</svg>" % (left, height // 2))
    x_of, y_of = operator.itemgetter(0), operator.itemgetter(1)
    x0 = min(min(map(x_of, points)) for points in drawn_points)
    x1 = max(max(map(x_of, points)) for points in drawn_points)
    y0 = min(min(map(y_of, points)) for points in drawn_points)
    y1 = max(max(map(y_of, points)) for points in drawn_points)
    pad_x = 0.5 if x_labels or x0 == x1 else (x1 - x0) * 0.03
    pad_y = (y1 - y0) * 0.05 or abs(y0) * 0.1 or 1.0
    x0, x1, y0, y1 = x0 - pad_x, x1 + pad_x, y0 - pad_y, y1 + pad_y
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y):
        return top + plot_h - (y - y0) / (y1 - y0) * plot_h

    parts = [head, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
             "fill=\"none\" stroke=\"#999\"/>" % (left, top, plot_w, plot_h)]
    for tick in _nice_ticks(y0, y1):
        parts.append(
            "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" "
            "stroke=\"#eee\"/><text x=\"%d\" y=\"%.1f\" "
            "text-anchor=\"end\">%s</text>" % (
                left, left + plot_w, py(tick), py(tick), left - 4,
                py(tick) + 4, _tick_text(tick, log_y)))
    x_ticks = sorted(x_labels.items()) if x_labels else [
        (tick, _tick_text(tick, log_x)) for tick in _nice_ticks(x0, x1)]
    for tick, text in x_ticks:
        parts.append("<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s"
                     "</text>" % (px(tick), height - bottom + 16,
                                  _esc(text)))
    parts.append("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s"
                 "</text>" % (left + plot_w // 2, height - 2, _esc(x_title)))
    for s, points in drawn:
        if scatter:
            parts += ["<circle class=\"point\" data-run=\"%s\" cx=\"%.1f\" "
                      "cy=\"%.1f\" r=\"4\" fill=\"%s\"><title>%s</title>"
                      "</circle>" % (s["run"], px(x), py(y), s["color"],
                                     _esc(s["name"])) for x, y in points]
            continue
        shown = _thin(points)
        parts.append(
            "<polyline class=\"series\" data-run=\"%s\" data-count=\"%d\" "
            "fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"%s\">"
            "<title>%s</title></polyline>" % (
                s["run"], len(points), s["color"], " ".join(
                    "%.1f,%.1f" % (px(x), py(y)) for x, y in shown),
                _esc(s["name"])))
    parts.append("</svg>")
    return "".join(parts)


def _legend_html(runs):
    return "<p class=\"legend\">%s</p>" % "".join(
        "<span><i style=\"background:%s\"></i><a href=\"/runs/%s\">%s</a>"
        "</span>" % (r["color"], r["run"], _esc(r["name"])) for r in runs)


def _plots_html(runs, log_y, params):
    """Each scalar's history against step, a line per run; runs are
    [{"run", "name", "color", "series": {key: [(step, value)]}}]."""
    keys = sorted({key for r in runs for key in r["series"]})
    if not keys:
        return ""
    toggle = "<a href=\"%s\">%s</a>" % (
        _esc(_query(params, log=None if log_y else "1")),
        "linear scale" if log_y else "log scale")
    figures = "".join(
        "<figure data-key=\"%s\"><figcaption>%s</figcaption>%s</figure>" % (
            _esc(key), _esc(key), _svg_chart([
                dict(r, points=r["series"][key]) for r in runs
                if key in r["series"]], "step", log_y=log_y))
        for key in keys)
    legend = _legend_html(runs) if len(runs) > 1 else ""
    return "<h2>Plots</h2><p>%s</p>%s<div class=\"plots\">%s</div>" % (
        toggle, legend, figures)


def _differing_flags(summaries):
    names = sorted({n for x in summaries for n in x["flags"]})
    return [n for n in names if len({encode_flag_val(x["flags"].get(n))
                                     for x in summaries}) > 1]


def _flag_scatter(summaries, colors, flag, key):
    """A scatter of the last value of scalar key against flag: numbers
    on a numeric axis (log if they span 100x), others as categories."""
    values = [x["flags"].get(flag) for x in summaries]
    numeric = all(_finite(v) for v in values)
    x_labels, log_x = None, False
    if numeric:
        log_x = min(values) > 0 and max(values) >= 100 * min(values)
        at = values
    else:
        texts = sorted({encode_flag_val(v) for v in values})
        x_labels = {i: t for i, t in enumerate(texts)}
        at = [texts.index(encode_flag_val(v)) for v in values]
    series = [{"run": x["id"], "name": "%s %s=%s" % (
        x["id"][:SHORT_ID_LEN], flag, encode_flag_val(x["flags"].get(flag))),
        "color": colors[x["id"]], "points": [(xv, x["scalars"].get(key))]}
        for x, xv in zip(summaries, at)]
    return _svg_chart(series, flag, log_x=log_x, scatter=True,
                      x_labels=x_labels)


def _plot_runs(view, summaries):
    """What _plots_html takes, for summaries: names give the id and the
    flags that differ between the runs; a color per run."""
    differ = _differing_flags(summaries)
    return [{"run": x["id"], "color": _VIEW_COLORS[i % len(_VIEW_COLORS)],
             "name": " ".join([x["id"][:SHORT_ID_LEN]] + [
                 "%s=%s" % (n, encode_flag_val(x["flags"][n]))
                 for n in differ if n in x["flags"]]),
             "series": _scalar_series(view.scalars(os.path.join(
                 view.runs_dir, x["id"])))}
            for i, x in enumerate(summaries)]


def _compare_page(view, params):
    selected, columns, rows = _view_compared(view, params)
    table = "<tr>%s</tr>%s" % (
        "".join("<th>%s</th>" % _esc(c) for c in columns), "".join(
            "<tr>%s</tr>" % "".join(
                "<td><a href=\"/runs/%s\">%s</a></td>" % (x["id"], r["run"])
                if c == "run" else "<td>%s</td>" % _esc(_table_cell(
                    c, r.get(c))) for c in columns)
            for x, r in zip(selected, rows)))
    runs_param = ",".join(x["id"][:SHORT_ID_LEN] for x in selected)
    log_y = _param(params, "log") == "1"
    plot_runs = _plot_runs(view, selected)
    scalar_keys = sorted({k for x in selected for k in x["scalars"]})
    key = _param(params, "scalar") or ("loss" if "loss" in scalar_keys else
                                       (scalar_keys or [""])[0])
    scatter = ""
    differ = _differing_flags(selected)
    if key and differ and len(selected) > 1:
        colors = {r["run"]: r["color"] for r in plot_runs}
        options = "".join("<option%s>%s</option>" % (
            " selected" if k == key else "", _esc(k)) for k in scalar_keys)
        scatter = (
            "<h2>Flags against %s</h2><form method=\"get\" "
            "action=\"/compare\"><input type=\"hidden\" name=\"runs\" "
            "value=\"%s\">scalar <select name=\"scalar\">%s</select> "
            "<button>Show</button></form><div class=\"plots\">%s</div>" % (
                _esc(key), runs_param, options, "".join(
                    "<figure data-flag=\"%s\"><figcaption>%s</figcaption>%s"
                    "</figure>" % (_esc(f), _esc(f), _flag_scatter(
                        selected, colors, f, key)) for f in differ)))
    body = ("<h1>Compare %d runs</h1><p><a href=\"/compare.csv?runs=%s\" "
            "download=\"compare.csv\">CSV</a> <a href=\"/api/compare?runs="
            "%s\">JSON</a></p><table class=\"compare\">%s</table>%s%s" % (
                len(selected), runs_param, runs_param, table,
                _plots_html(plot_runs, log_y, params), scatter))
    return _html_page("Compare", body)


# Answers ------------------------------------------------------------------


class _Reply:
    """An HTTP answer: status, content type, and a body (bytes) or the
    path of a file to send."""

    def __init__(self, status, ctype, body=b"", path=None, headers=()):
        self.status = status
        self.ctype = ctype
        self.body = body
        self.path = path
        self.headers = list(headers)


def _html_reply(text, status=200):
    return _Reply(status, "text/html; charset=utf-8", text.encode("utf-8"))


def _json_reply(data, status=200):
    return _Reply(status, "application/json", json.dumps(
        _json_safe(data)).encode("utf-8"))


def _error_reply(status, message, api):
    if api:
        return _json_reply({"error": message}, status)
    title = {404: "Not found", 400: "Bad request",
             403: "Forbidden"}.get(status, "Server error")
    return _html_reply(_html_page(title, "<h1>%s</h1><p>%s</p><p><a "
                                  "href=\"/\">All runs</a></p>" % (
                                      title, _esc(message))), status)


def _path_parts(path):
    """The decoded segments of a URL path. A segment that decodes to a
    separator, `.` or `..`, or an empty one inside the path, names
    nothing: a path cannot step out of where its segments lead."""
    from urllib.parse import unquote
    if not path.startswith("/"):
        raise _NotFound("not a path: %s" % path)
    raw = path[1:].split("/")
    if raw[-1] == "":
        raw.pop()
    parts = [unquote(p) for p in raw]
    for part in parts:
        if (part in ("", ".", "..") or "/" in part or "\\" in part
                or "\0" in part):
            raise _NotFound("no such page: %s" % path)
    return parts


def _run_file_path(view, ref, rel_parts):
    """The real path of file rel_parts of a run in the view, if it is a
    file inside that run's directory (after following symlinks)."""
    x = _view_find(view, ref)
    run_dir = os.path.join(view.runs_dir, x["id"])
    if any(os.path.isabs(p) or os.path.splitdrive(p)[0] for p in rel_parts):
        raise _NotFound("no such file")
    real = _path_inside(run_dir, os.path.join(*rel_parts))
    if real is None or not os.path.isfile(real):
        raise _NotFound("run %s has no file %s" % (
            x["id"][:SHORT_ID_LEN], "/".join(rel_parts)))
    return real


def _file_reply(path):
    """A run file's reply: text as plain text (HTML too, so that no page
    from a run runs script as the view), images as themselves, anything
    else as a download."""
    import mimetypes
    ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    headers = [("Content-Security-Policy", "sandbox; default-src 'none'")]
    if ctype.startswith("text/") or ctype in _VIEW_TEXT_TYPES:
        ctype = "text/plain; charset=utf-8"
    elif ctype not in _VIEW_IMAGE_TYPES:
        ctype = "application/octet-stream"
        headers.append(("Content-Disposition", "attachment; filename=\"%s\""
                        % os.path.basename(path).replace('"', "")))
    return _Reply(200, ctype, path=path, headers=headers)


def _run_json(view, ref):
    x = _view_find(view, ref)
    if x["status"] == "corrupt":
        return {"id": x["id"], "status": "corrupt"}
    run = Run(x["id"], os.path.join(view.runs_dir, x["id"]))
    data = {"id": run.id, "attributes": dict(_run_info_items(run)),
            "flags": run.flags,
            "scalars": _run_scalar_stats(run.dir)[0],
            "files": [{"path": rel, "size": size, "source": is_source}
                      for rel, size, is_source in _run_files(
                          run.dir, set(run.get("sourcecode") or ()))]}
    if x["kind"] == "batch":
        data["trials"] = [t["id"] for t in _view_summaries(view)
                          if t["batch"] == run.id]
    return data


def _output_json(view, ref, params):
    x = _view_find(view, ref)
    run = Run(x["id"], os.path.join(view.runs_dir, x["id"]))
    offset = _param(params, "offset", "0")
    if not offset.lstrip("-").isdigit():
        raise _BadRequest("offset must be a whole number")
    text, end = _read_output(run, int(offset), VIEW_OUTPUT_CHUNK)
    return {"text": text, "offset": end, "status": run_status(run.dir)}


def _scalars_json(view, params):
    runs = {}
    for x in _view_selected(view, params):
        series = runs[x["id"]] = {}
        for key, val, step, ts in view.scalars(os.path.join(
                view.runs_dir, x["id"])):
            series.setdefault(key, []).append([step, val, ts])
    return {"runs": runs}


def _route(view, parts, params):
    """The reply to a GET of the path parts with params."""
    n = len(parts)
    if n == 0:
        return _html_reply(_runs_page(view, params))
    if parts[0] == "runs" and n == 2:
        return _html_reply(_run_page(view, parts[1], params))
    if parts[0] == "runs" and n > 3 and parts[2] == "files":
        return _file_reply(_run_file_path(view, parts[1], parts[3:]))
    if parts == ["compare"]:
        return _html_reply(_compare_page(view, params))
    if parts == ["compare.csv"]:
        out = io.StringIO()
        _write_compare_csv(out, *_view_compared(view, params)[1:])
        return _Reply(200, "text/csv; charset=utf-8", out.getvalue().encode(
            "utf-8"), headers=[("Content-Disposition",
                                "attachment; filename=\"compare.csv\"")])
    if parts[0] != "api":
        raise _NotFound("no such page: /%s" % "/".join(parts))
    if parts == ["api", "runs"]:
        page, total = _view_listing(view, params)
        return _json_reply({"total": total, "offset": _int_param(
            params, "offset", 0), "runs": [_listing_json(x, row)
                                           for x, row in page]})
    if parts[1:2] == ["runs"] and n == 3:
        return _json_reply(_run_json(view, parts[2]))
    if parts[1:2] == ["runs"] and n == 4 and parts[3] == "output":
        return _json_reply(_output_json(view, parts[2], params))
    if parts == ["api", "compare"]:
        _selected, columns, rows = _view_compared(view, params)
        return _json_reply({"columns": columns, "rows": [
            [r.get(c) for c in columns] for r in rows]})
    if parts == ["api", "scalars"]:
        return _json_reply(_scalars_json(view, params))
    raise _NotFound("no such endpoint: /%s" % "/".join(parts))


def _view_reply(view, target):
    """The _Reply to a GET of target (a path and query). Bad URLs get a
    404 or 400 page (JSON under /api/), never a traceback."""
    from urllib.parse import parse_qs
    path, _, query = target.partition("?")
    try:
        return _route(view, _path_parts(path), parse_qs(query))
    except (_NotFound, _BadRequest) as e:
        return _error_reply(e.http_status, str(e), path.startswith("/api/"))


_PAGE_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; "
                "script-src 'unsafe-inline'; connect-src 'self'; "
                "img-src 'self'; form-action 'self'; frame-ancestors 'none'")


def _request_host(host_header):
    """The host name of a Host header, without its port."""
    if host_header.startswith("["):
        return host_header.partition("]")[0] + "]"
    return host_header.rpartition(":")[0] if ":" in host_header \
        else host_header


def _view_server(view, host, port):
    """A threaded HTTP server of view on host:port (0: a free port)."""
    import http.server

    class ViewHandler(http.server.BaseHTTPRequestHandler):
        server_version = "guild.py/" + __version__

        def do_GET(self):
            self._answer(send_body=True)

        def do_HEAD(self):
            self._answer(send_body=False)

        def _answer(self, send_body):
            host_header = self.headers.get("Host")
            try:
                if view.loopback and host_header and _request_host(
                        host_header) not in _LOOPBACK_HOSTS:
                    reply = _error_reply(403, "this view answers only on "
                                         "127.0.0.1 or localhost", False)
                else:
                    reply = _view_reply(view, self.path)
            except Exception as e:  # a page failed: say so, keep serving
                log.error("error answering %s: %s: %s", self.path,
                          type(e).__name__, e)
                reply = _error_reply(500, "the view failed to build this "
                                     "page; see guild view's output",
                                     self.path.startswith("/api/"))
            try:
                self._send(reply, send_body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the browser went away

        def _send(self, reply, send_body):
            size = len(reply.body)
            src = open(reply.path, "rb") if reply.path else None
            try:
                if src is not None:
                    size = os.fstat(src.fileno()).st_size
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.ctype)
                self.send_header("Content-Length", str(size))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                if reply.ctype.startswith("text/html"):
                    self.send_header("Content-Security-Policy",
                                     _PAGE_POLICY)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.end_headers()
                if send_body and src is not None:
                    shutil.copyfileobj(src, self.wfile)
                elif send_body:
                    self.wfile.write(reply.body)
            finally:
                if src is not None:
                    src.close()

        def log_message(self, format, *args):
            log.debug("%s - %s", self.address_string(), format % args)

    try:
        server = http.server.ThreadingHTTPServer((host, port), ViewHandler)
    except (OSError, OverflowError) as e:
        raise ViewError("cannot serve on %s:%s: %s" % (
            host, port, getattr(e, "strerror", None) or e))
    server.daemon_threads = True
    return server


def _is_loopback(host):
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


# TensorBoard --------------------------------------------------------------
#
# `guild tensorboard` gives TensorBoard a log dir of its own holding, for
# each run, links to the event files the run wrote and an event file of
# what it printed, kept up to date while TensorBoard runs.

TENSORBOARD_RELOAD_SECONDS = 5
_PRINTED_EVENTS = "events.out.tfevents.0.guild-printed"


def _tensorboard_command():
    """How to start TensorBoard: the `tensorboard` program, or this
    Python's tensorboard package."""
    program = shutil.which("tensorboard")
    if program:
        return [program]
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:
        return [sys.executable, "-m", "tensorboard.main"]
    raise ViewError("tensorboard is not installed: pip install tensorboard")


class _TensorBoardLogdir:
    """A log dir mirroring runs for TensorBoard; sync() brings it up to
    date. Each run is a directory named by its id, operation and label."""

    def __init__(self, path, runs):
        self.path = path
        self.runs = [(run, os.path.join(path, re.sub(
            r"[^\w.=+,@ -]", "_", "%s %s %s" % (
                run.short_id, run.op_desc, run.get("label") or "")
        ).strip()[:120])) for run in runs]
        self._printed = {}  # run id: printed records written so far
        self._copied = {}  # event file copied (no symlinks): its size

    def sync(self):
        for run, top in self.runs:
            for rel in _event_files(run.dir):
                self._mirror(os.path.join(run.dir, rel),
                             os.path.join(top, *rel.split("/")))
            records = _printed_scalars(run.dir)
            done = self._printed.get(run.id, 0)
            if len(records) > done:
                os.makedirs(top, exist_ok=True)
                with open(os.path.join(top, _PRINTED_EVENTS), "ab") as f:
                    if not done:
                        f.write(_event_file_header(records[0][3] / 1e6))
                    f.write(_event_records(records[done:]))
                self._printed[run.id] = len(records)

    def _mirror(self, src, dest):
        """Link dest to src, or (where links are not allowed) copy src
        again each time it grows."""
        if dest not in self._copied and os.path.lexists(dest):
            return
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if dest not in self._copied:
            try:
                os.symlink(src, dest)
                return
            except OSError:
                self._copied[dest] = -1
        try:
            size = os.path.getsize(src)
            if size != self._copied[dest]:
                shutil.copyfile(src, dest + ".tmp")
                os.replace(dest + ".tmp", dest)
                self._copied[dest] = size
        except OSError:
            pass  # gone, or being written: next time


# ---------------------------------------------------------------------------
## 19. Python API
# ---------------------------------------------------------------------------


def run_op(op, flags=None, cwd=None, quiet=False, stage=False, **opts):
    """Run op as `guild run OP FLAG=VAL... -y` would; return the run.

    flags maps names to values or command line text (`{"lr": 0.1}`,
    `{"lr": "[0.1,0.01]"}`); opts are run_attrs's (label, optimizer,
    max_trials, random_seed, batch_files, stage_trials, gpus ...). A
    batch returns its batch run. With stage, the run is only staged.
    """
    run = create_run(op, flags, cwd, stage=stage, **opts)
    if not stage:
        saved, _STATE.quiet = _STATE.quiet, quiet
        try:
            _start_run(run)
        finally:
            _STATE.quiet = saved
    return run


def runs(operation=None, label=None, unlabeled=False, status=None,
         started=None, batch=None, deleted=False):
    """Runs in the store, newest first, filtered as the CLI filters.

    status is a status name or a list of them; batch a batch run (or
    id) whose trials to return; deleted lists the trash instead.
    """
    runs_dir = _trash_runs_dir() if deleted else _runs_dir()
    return _runs_of(_find_summaries(
        runs_dir, operation, label, unlabeled, status, started, batch),
        runs_dir)


def _find_summaries(runs_dir, operation=None, label=None, unlabeled=False,
                    status=None, started=None, batch=None):
    statuses = [status] if isinstance(status, str) else list(status or ())
    unknown = [x for x in statuses if x not in RUN_STATUSES]
    if unknown:
        raise UsageError("unknown status %r (use %s)" % (
            unknown[0], ", ".join(RUN_STATUSES)))
    summaries = run_summaries(runs_dir)
    if isinstance(batch, str):  # an id, prefix or index, as the CLI's
        batch = _select_one(batch, _runs_of(summaries, runs_dir))
    where = RunFilter(operation, label, unlabeled, statuses, started,
                      getattr(batch, "id", batch))
    return [x for x in summaries if where.matches(x)]


def compare(runs=None, **filters):
    """Rows (dicts) comparing runs: run, operation, started, time,
    status, label, each flag and the last value of each scalar.

    runs is a list of runs (default: every run that filters select;
    filters are those of `runs`, but for deleted).
    """
    if runs is None:
        return compare_rows(_find_summaries(_runs_dir(), **filters))[1]
    wanted = {getattr(r, "id", r) for r in runs}
    return compare_rows([x for x in run_summaries()
                         if x["id"] in wanted])[1]


def _check_arg_types(**args):
    """UsageError for an API argument of the wrong type: name=(value,
    type or types); None is always allowed, a bool is not an int."""
    for name, (val, types) in args.items():
        if val is not None and (not isinstance(val, types) or (
                isinstance(val, bool) and types is int)):
            raise UsageError("%s must be %s, not %r" % (
                name, " or ".join(t.__name__ for t in (
                    types if isinstance(types, tuple) else (types,))),
                val))


def run_attrs(opspec, flags=None, cwd=None, label=None, optimizer=None,
              max_trials=None, random_seed=None, batch_files=(),
              stage_trials=False, fail_on_trial_error=False, gpus=None,
              force_flags=False, minimize=None, maximize=None,
              opt_flags=None, tags=(), stop_after=None):
    """The attributes of a new run of opspec (a batch run if the flags
    hold lists, ranges or distributions, or batch_files or an optimizer
    are given). Validates everything; creates nothing.

    flags maps names to command line text (`"0.1"`, `"[a,b]"`) or values;
    tags (a list) go to the run, and a batch's trials; stop_after
    (minutes) stops a script run (each trial of a batch) that runs longer.
    A batch judges its trials by the scalar minimize or maximize names
    (default: minimize loss); opt_flags maps the optimizer's settings
    (tpe: random-starts, in-flight) to values.
    """
    tags = list(tags or ())
    _check_arg_types(opspec=(opspec, str), flags=(flags, dict),
                     cwd=(cwd, (str, os.PathLike)), label=(label, str),
                     optimizer=(optimizer, str), max_trials=(max_trials, int),
                     random_seed=(random_seed, int),
                     batch_files=(batch_files, (list, tuple)),
                     gpus=(gpus, (str, int)))
    if gpus is not None:
        _check_text("--gpus", str(gpus))
    cwd = os.path.abspath(cwd or os.getcwd())
    op = _resolve_op(opspec, cwd)
    raw = {}
    for name, val in (flags or {}).items():
        if not isinstance(name, str):
            raise FlagError("invalid flag name %r: expected text" % (name,))
        try:
            raw[name] = val if isinstance(val, str) else encode_flag_val(val)
        except ValueError:  # an int with more digits than str() makes
            raise FlagError("invalid value for %s: too many digits" % name)
    flag_vals = _resolve_flags(op, raw, force_flags)
    slurm = os.environ.get(SLURM_SUBMISSION_ENV) if op["kind"] == "queue" \
        else None
    if slurm:
        _read_submission(slurm)  # before anything is written to the store
    rows = _read_batch_files(batch_files, op, force_flags, cwd)
    _check_required(op, flag_vals, rows)
    dists = [n for n, v in sorted(flag_vals.items()) if is_distribution(v)]
    lists = [n for n, v in flag_vals.items() if isinstance(v, list)]
    if optimizer is None:
        optimizer = "random" if dists else "+" if lists or rows else None
    if optimizer is None:
        if max_trials is not None or random_seed is not None or \
                minimize or maximize or opt_flags:
            raise UsageError("--max-trials and --random-seed apply to "
                             "batches (as do --minimize, --maximize and "
                             "--opt-flag): give a flag a list or a range")
        attrs = {"op": op, "flags": flag_vals, "gpus": gpus,
                 "project": op.get("project"), "tags": tags,
                 "stop_after": stop_after,
                 "label": render_label(label, flag_vals)
                 if label is not None else _default_label(flag_vals, tags)}
        if slurm:
            attrs["slurm"] = slurm
        return attrs
    if optimizer in SKOPT_OPTIMIZERS:
        raise UsageError("optimizer '%s' is Guild AI's, built on "
                         "scikit-optimize: use -o tpe, the model-based "
                         "search built into guild.py" % optimizer)
    if optimizer not in OPTIMIZERS:
        raise UsageError("unsupported optimizer '%s' (use + for grid "
                         "search, random, or tpe)" % optimizer)
    if op["kind"] != "script":
        raise OpError("'%s' cannot run as a batch" % opspec)
    if optimizer == "+" and dists:
        raise FlagError("grid search cannot sample %s=%s: use "
                        "--optimizer random, or a list or range[...]"
                        % (dists[0], encode_flag_val(flag_vals[dists[0]])))
    if optimizer != "+" and rows:
        raise UsageError("batch files run every row: use them without "
                         "--optimizer %s" % optimizer)
    if optimizer != "+" and not (dists or lists):
        raise FlagError("%s search needs a search space: give a flag "
                        "a range or a list, as in lr=[0.001:0.1], "
                        "lr=loguniform[1e-5:1e-1] or opt=[sgd,adam]"
                        % optimizer)
    if optimizer == "tpe" and any(flag_vals[n] == [] for n in lists):
        raise FlagError("tpe cannot choose from an empty list (%s=[])"
                        % next(n for n in lists if flag_vals[n] == []))
    if minimize and maximize:
        raise UsageError("--minimize and --maximize cannot be used "
                         "together")
    objective = (maximize or minimize or "loss").split()
    if objective[:1] == ["last"]:  # a compare column's word for it
        objective = objective[1:]
    if len(objective) != 1:
        raise UsageError(
            "--%s takes the name of a scalar, whose last value judges a "
            "trial: '%s' is not one" % ("maximize" if maximize else
                                        "minimize", maximize or minimize))
    opt_flags = _opt_flags(optimizer, opt_flags or {})
    if max_trials is not None and max_trials < 1:
        raise UsageError("--max-trials must be at least 1")
    if random_seed is None:
        random_seed = random.SystemRandom().randrange(2 ** 31)
    batch = {"op": {"kind": "batch", "name": optimizer}, "flags": {},
            "label": label or " ".join(tags),
            "stage_trials": bool(stage_trials), "tags": tags,
            "stop_after": stop_after,
            "gpus": gpus, "project": op.get("project"),
            "max_trials": max_trials, "random_seed": random_seed,
            "batch_rows": rows or None,
            "fail_on_trial_error": bool(fail_on_trial_error),
            "objective": {"scalar": objective[0],
                          "maximize": bool(maximize)},
            "opt_flags": opt_flags,
            "proto": {"op": op, "flags": flag_vals, "label": label,
                      "given": sorted(raw)}}
    _check_batch_size(batch)
    return batch


def _opt_flags(optimizer, given):
    """An optimizer's settings (-Fo NAME=VAL), checked: whole numbers no
    smaller than each allows."""
    known = OPT_FLAGS.get(optimizer, {})
    flags = {}
    for name, val in sorted(given.items()):
        if name not in known:
            raise UsageError("unknown optimizer flag '%s' for %s%s" % (
                name, optimizer, " (%s)" % ", ".join(sorted(known))
                if known else ": it takes none"))
        if isinstance(val, str):
            val = decode_flag_val(val)
        if isinstance(val, bool) or not isinstance(val, int) or \
                val < known[name]:
            raise UsageError("optimizer flag %s must be a whole number of "
                             "at least %d" % (name, known[name]))
        flags[name] = val
    return flags


def create_run(opspec, flags=None, cwd=None, stage=False, run_dir=None,
               **opts):
    """Create a run (or a batch run) of opspec and return it.

    opts are run_attrs's. The run is staged if stage, else pending: this
    process is about to start it (`run_op` creates and starts a run).
    """
    return _create_run(run_attrs(opspec, flags, cwd, **opts), stage,
                       run_dir)


def _create_run(attrs, stage, run_dir=None):
    """Create the run that attrs (from run_attrs) describe."""
    if run_dir is None:
        runs_dir = _runs_dir()
        _ensure_dir(runs_dir)
        run_dir = os.path.join(runs_dir, mkid())
    op = attrs.get("proto", attrs)["op"]
    source_root, source_files = None, ()
    if op["kind"] == "script":
        source_root = op["project"]
        source_files, left_out = _source_snapshot(
            source_root, op["script"], [_guild_home()])
        if left_out:
            attrs = dict(attrs, sourcecode_left_out=left_out)
            _warn("the source snapshot leaves out %s ('guild runs info' "
                  "names them; %s [sourcecode] sets what is copied)"
                  % (_left_out_text(_left_out_info(attrs)), SOURCE_CONFIG))
    return _init_run(run_dir, attrs, staged=stage, source_root=source_root,
                     source_files=source_files)


# ---------------------------------------------------------------------------
## 20. Command line
# ---------------------------------------------------------------------------


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, and takes no
    abbreviations: `-c` is never a prefix of `--clear`."""

    def __init__(self, *args, **kw):
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)

    def error(self, message):
        raise UsageError("%s\nTry '%s --help' for help." % (
            message, self.prog))


# Every command is a function `_cmd_NAME(args)` registered by the
# decorator below with its help line and the function that adds its
# arguments to an argparse parser. A sub-command's name holds its parent's
# ("runs info"). The parser, the help and the tests are built from COMMANDS.
COMMANDS = {}


class _Command:
    """A registered command: name ("runs info"), help line, add_args(p),
    func(args) -> exit code, and aliases (last words, such as "rm")."""

    def __init__(self, name, help, add_args, func, aliases):
        self.name = name
        self.help = help
        self.add_args = add_args
        self.func = func
        self.aliases = tuple(aliases)

    @property
    def parent(self):
        return self.name.rpartition(" ")[0]

    @property
    def word(self):
        return self.name.rpartition(" ")[2]


def _command(name, help, add_args, aliases=()):
    """Register the decorated function as command `name`.

    add_args(p) sets p's description and adds its arguments; the function
    gets the parsed args and returns the exit code. A function may be
    registered under several names (`stop` and `runs stop`)."""
    def register(func):
        if name in COMMANDS:
            raise ValueError("command '%s' registered twice" % name)
        COMMANDS[name] = _Command(name, help, add_args, func, aliases)
        return func
    return register


def _confirm(prompt, default=True, yes=False):
    if yes:
        return True
    sys.stdout.write(prompt + (" (Y/n) " if default else " (y/N) "))
    sys.stdout.flush()
    line = sys.stdin.readline()
    if not line:
        sys.stdout.write("\n")
        return False
    answer = line.strip().lower()
    if not answer:
        return default
    return answer in ("y", "yes")


def _install_stop_handlers():
    """SIGTERM, and SIGHUP (the terminal closed), stop the command as
    Ctrl-C does: a run it watches ends terminated, its script's process
    group signalled. Returns what to restore: [(signum, old handler)]."""
    if threading.current_thread() is not threading.main_thread():
        return []
    saved = [(signum, signal.getsignal(signum)) for signum in [
        getattr(signal, n) for n in _STOP_SIGNALS + ("SIGUSR1",)
        if hasattr(signal, n)]]
    for name in _STOP_SIGNALS:
        signal.signal(getattr(signal, name), _raise_stop)
    if not IS_WINDOWS:
        _Notice.install()
    return saved


def _exit_code(exit_status):
    return exit_status if exit_status >= 0 else 128 - exit_status


def _add_filter_args(p):
    g = p.add_argument_group("filters")
    g.add_argument("-Fo", "--operation", dest="filter_op", metavar="VAL",
                   help="runs whose operation contains VAL")
    g.add_argument("-Fl", "--label", dest="filter_label", metavar="VAL",
                   help="runs whose label contains VAL (- for unlabeled)")
    g.add_argument("-Fu", "--unlabeled", action="store_true",
                   help="runs with no label but their flags")
    g.add_argument("-Ft", "--tag", dest="filter_tags", metavar="TAG",
                   action="append", help="runs tagged TAG (may be "
                   "repeated: any of them)")
    g.add_argument("-Fc", "--comment", dest="filter_comment", metavar="VAL",
                   help="runs with a comment containing VAL (any case)")
    marks = g.add_mutually_exclusive_group()
    marks.add_argument("-Fm", "--marked", dest="filter_marked",
                       action="store_const", const=True,
                       help="marked runs")
    marks.add_argument("-Fn", "--unmarked", dest="filter_marked",
                       action="store_const", const=False,
                       help="runs not marked")
    g.add_argument("-Fs", "--started", dest="filter_started",
                   metavar="RANGE", help="runs started in RANGE: today, "
                   "'last 2 hours', 'after 2026-11-01', 'between 9:00 and "
                   "12:00' ...")
    for name in STATUS_FILTERS:
        g.add_argument("-S" + name[0], "--" + name, action="store_true",
                       dest="status_" + name, help="%s runs" % name)
    g.add_argument("--batch", metavar="RUN", help="the trials of batch RUN")


def _add_runs_args(p, verb, default="all"):
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="runs to %s (default: %s)" % (verb, default))
    p.add_argument("-y", "--yes", action="store_true",
                   help="do not ask for confirmation")
    _add_filter_args(p)


def _listing(args=None, deleted=False):
    """(summaries, runs) a command sees, newest first, index-aligned:
    the store (or the trash), narrowed by args' filter options."""
    runs_dir = _trash_runs_dir() if deleted else _runs_dir()
    summaries = run_summaries(runs_dir)
    if args is not None:
        where = _filter_from_args(args, summaries)
        summaries = [x for x in summaries if where.matches(x)]
    return summaries, _runs_of(summaries, runs_dir)


def _filter_from_args(args, summaries):
    statuses = [name for name in STATUS_FILTERS if getattr(
        args, "status_" + name, False)]
    batch = None
    if getattr(args, "batch", None):
        batch = _select_one(args.batch,
                            _runs_of(summaries, _runs_dir())).id
    return RunFilter(args.filter_op, args.filter_label, args.unlabeled,
                     statuses, args.filter_started, batch, args.filter_tags,
                     args.filter_comment, args.filter_marked)


def _select_or_all(args, deleted=False, latest=False):
    """(summaries, selected runs): RUN args among the filtered listing,
    or without them every run in it (only the newest if latest)."""
    summaries, runs = _listing(args, deleted)
    if args.runs:
        return summaries, select_runs(args.runs, runs)
    return summaries, runs[:1] if latest else runs


def _summary_rows(summaries, selected=None):
    """Listing rows `[N:id]  op  started  status  label` (N from 1)."""
    wanted = None if selected is None else {run.id for run in selected}
    rows = []
    for i, x in enumerate(summaries):
        if wanted is not None and x["id"] not in wanted:
            continue
        rows.append(["[%d:%s]" % (i + 1, x["id"][:SHORT_ID_LEN]), x["op"],
                     _format_time(x["started"] or x["created"]),
                     x["status"], x["label"]])
    return rows


def _format_table(rows):
    if not rows:
        return []
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in
                      enumerate(row)).rstrip() for row in rows]


def _confirm_runs(args, verb, summaries, selected):
    """List selected runs and ask before verb-ing them (unless -y)."""
    if args.yes:
        return
    print("You are about to %s the following runs:" % verb)
    for line in _format_table(_summary_rows(summaries, selected)):
        print("  " + line)
    if not _confirm("%s %d run(s)?" % (verb.capitalize(), len(selected))):
        raise GuildError("aborted")


def _runs_to_act_on(args, verb, deleted=False, keep=None, latest=False):
    """The runs a command acts on (RUN args or filters, narrowed by keep),
    confirmed by the user; None, after saying so, if there are none."""
    summaries, selected = _select_or_all(args, deleted, latest)
    if keep is not None:
        selected = [run for run in selected if keep(run)]
    if not selected:
        print("Nothing to %s" % verb)
        return None
    _confirm_runs(args, verb, summaries, selected)
    return selected


def _act_on_runs(args, verb, done, action, deleted=False, latest=False):
    """Apply action to each selected run (after asking), then say how
    many: `Restored 2 run(s)`."""
    selected = _runs_to_act_on(args, verb, deleted, latest=latest)
    if not selected:
        return 0
    failed = 0
    for run in selected:
        try:
            action(run)
        except RunError as e:  # a damaged run: say so, do the others
            sys.stderr.write("%s: cannot %s %s: %s\n" % (PROG, verb,
                                                         run.id, e))
            failed += 1
    print("%s %d run(s)" % (done, len(selected) - failed))
    return 1 if failed else 0


QUEUE_DOC = """\
Start staged runs, oldest first, one at a time.

Several queues may share one run store: each staged run is started by one
queue only. A queue waits while other runs are running unless
ignore-running is set (wait-for-running=no, as Guild AI 0.7+ spells
it, is the same). With gpus set, the runs it starts see only those
GPUs, and runs staged with --gpus are started only by a queue whose gpus
match. run-once starts the staged runs there are and stops."""


def _build_run_parser(p):
    p.description = ("Run a script as a tracked run, stage it, or start or "
                     "restart a run.")
    p.add_argument("opspec", nargs="?", metavar="OP",
                   help="a script (NAME.py) or 'queue'")
    p.add_argument("flags", nargs="*", metavar="FLAG=VAL",
                   help="flag values; a list [a,b] or a range makes a "
                   "batch; @FILE.csv or @FILE.json lists trials")
    p.add_argument("-y", "--yes", action="store_true",
                   help="do not ask for confirmation")
    p.add_argument("-l", "--label", help="the run's label; ${flag} is "
                   "replaced by the flag's value")
    p.add_argument("-t", "--tag", dest="tags", metavar="TAG",
                   action="append", default=[], help="tag the run (may be "
                   "repeated); the tags start its default label")
    p.add_argument("--stage", action="store_true",
                   help="stage the run to start later")
    p.add_argument("--start", metavar="RUN", help="start a staged run")
    p.add_argument("--restart", metavar="RUN", help="run a run again")
    p.add_argument("--run-dir", metavar="DIR",
                   help="use DIR as the run directory")
    p.add_argument("--stage-trials", action="store_true",
                   help="stage a batch's trials instead of running them")
    p.add_argument("-o", "--optimizer", metavar="NAME",
                   help="run as a batch: + (grid search, the default for "
                   "lists), random (the default for ranges) or tpe "
                   "(model-based search)")
    p.add_argument("-O", "--optimize", action="store_true",
                   help="run as a batch with the default optimizer, tpe")
    p.add_argument("-N", "--minimize", metavar="SCALAR",
                   help="the scalar an optimizer minimizes (default loss)")
    p.add_argument("-X", "--maximize", metavar="SCALAR",
                   help="the scalar an optimizer maximizes")
    p.add_argument("-Fo", "--opt-flag", dest="opt_flags", action="append",
                   default=[], metavar="NAME=VAL",
                   help="an optimizer setting; tpe: random-starts=N "
                   "(default %d), in-flight=K (trials kept staged or "
                   "running with --stage-trials, default %d)"
                   % (TPE_RANDOM_STARTS, TPE_IN_FLIGHT))
    p.add_argument("-m", "--max-trials", type=int, metavar="N",
                   help="at most N trials (random search: N, default %d)"
                   % DEFAULT_MAX_TRIALS)
    p.add_argument("--random-seed", type=int, metavar="N",
                   help="seed for random search, tpe and --max-trials")
    p.add_argument("--print-trials", action="store_true",
                   help="show the trials a batch would run, run nothing")
    p.add_argument("--fail-on-trial-error", action="store_true",
                   help="stop a batch at its first failed trial")
    p.add_argument("--gpus", metavar="IDS",
                   help="GPU ids to use (sets CUDA_VISIBLE_DEVICES)")
    p.add_argument("--force-flags", action="store_true",
                   help="accept flags the operation does not define")
    p.add_argument("--help-op", action="store_true",
                   help="show the operation's flags and exit")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not show the run's output")
    p.add_argument("--proto", metavar="RUN",
                   help="a new run with RUN's operation and flags (flags "
                   "given change them)")
    p.add_argument("--needed", action="store_true",
                   help="run only if no completed run of the operation has "
                   "these flags")
    p.add_argument("--stop-after", type=float, metavar="N",
                   help="stop the run after N minutes (it ends terminated)")
    p.add_argument("--print-cmd", action="store_true",
                   help="print the command the run would run, run nothing")
    p.add_argument("--test-sourcecode", action="store_true",
                   help="show the files the run's source snapshot would "
                   "copy and leave out, run nothing")
    p.add_argument("--save-trials", metavar="PATH",
                   help="write the trials a batch would run to PATH (CSV, "
                   "or JSON for *.json), run nothing")
    p.add_argument("--no-gpus", action="store_true",
                   help="hide every GPU from the run "
                   "(CUDA_VISIBLE_DEVICES=)")
    p.add_argument("-b", "--background", action="store_true",
                   help="start the run detached from this terminal, print "
                   "its id and return (guild watch follows it)")
    p.add_argument("--keep-batch", action="store_true",
                   help="keep the batch run when done (it is always kept)")


@_command("run", "run an operation", _build_run_parser)
def _cmd_run(args):
    if args.opspec and ("=" in args.opspec or args.opspec[:1] == "@"):
        args.flags = [args.opspec] + list(args.flags)  # run --restart X a=1
        args.opspec = None
    batch_files = [a[1:] for a in args.flags if a.startswith("@")]
    raw_flags = _parse_flag_args([a for a in args.flags
                                  if not a.startswith("@")])
    if args.start or args.restart:
        _check_existing_options(args, batch_files)
        return _run_existing(args, raw_flags)
    cwd = os.getcwd()
    if args.proto:
        args.opspec, raw_flags, cwd = _proto_op(args.proto, args.opspec,
                                                raw_flags)
    if not args.opspec:
        raise UsageError("missing operation\nTry 'guild run --help' "
                         "for help.")
    if args.no_gpus:
        if args.gpus:
            raise UsageError("--gpus and --no-gpus cannot be used together")
        args.gpus = ""  # CUDA_VISIBLE_DEVICES= : the script sees no GPU
    if args.background and args.stage:
        raise UsageError("--background and --stage cannot be used "
                         "together")
    if args.stop_after is not None and args.stop_after <= 0:
        raise UsageError("--stop-after takes minutes, more than 0")
    if args.help_op:
        op = _resolve_op(args.opspec, os.getcwd())
        doc = QUEUE_DOC if op["kind"] == "queue" else None
        print(_flagdefs_help(args.opspec, _op_flagdefs(op), doc))
        return 0
    attrs = run_attrs(
        args.opspec, raw_flags, cwd=cwd, label=args.label,
        optimizer=args.optimizer or ("tpe" if args.optimize else None),
        max_trials=args.max_trials, random_seed=args.random_seed,
        batch_files=batch_files, stage_trials=args.stage_trials,
        fail_on_trial_error=args.fail_on_trial_error, gpus=args.gpus,
        force_flags=args.force_flags, minimize=args.minimize,
        maximize=args.maximize, opt_flags=_parse_opt_flags(args.opt_flags),
        tags=args.tags, stop_after=args.stop_after)
    if args.print_trials:
        _print_trials(attrs)
        return 0
    if args.save_trials:
        _save_trials(attrs, args.save_trials)
        return 0
    if args.print_cmd:
        print(_shell_join(_script_words(attrs.get("proto") or attrs)[1]))
        return 0
    if args.test_sourcecode:
        _print_source_snapshot(attrs)
        return 0
    if args.needed and "proto" not in attrs:
        done = _same_completed_run(attrs)
        if done:
            print("Skipping run: %s already completed with these flags "
                  "(--needed)" % done[:SHORT_ID_LEN])
            return 0
    if not _confirm(_run_prompt(args, attrs), yes=args.yes):
        raise GuildError("aborted")
    run = _create_run(attrs, args.stage or args.background,
                      os.path.abspath(args.run_dir) if args.run_dir
                      else None)
    if args.background:
        _start_detached(run)
        return 0
    if args.stage:
        _print_staged(run, bool(args.run_dir))
        return 0
    return _exit_code(_start_run(run))


def _print_source_snapshot(attrs):
    """run --test-sourcecode: the files a run of attrs would copy, and
    those it would leave out, with why."""
    op = (attrs.get("proto") or attrs)["op"]
    if op["kind"] != "script":
        raise UsageError("--test-sourcecode: a queue has no source snapshot")
    files, left_out = _source_snapshot(op["project"], op["script"],
                                       [_guild_home()])
    settings = _source_settings(op["project"])
    print("Source snapshot of %s from %s (at most %d files of at most %s "
          "each; %s [sourcecode] changes what is copied):" % (
              op["script"], op["project"], settings["max-count"],
              _format_size(settings["max-size"]), SOURCE_CONFIG))
    for rel in files:
        print("  " + rel)
    info = _left_out_info({"sourcecode_left_out": left_out})
    if info:
        why = _left_out_why(info)
        print("Left out: %s" % _left_out_summary(info))
        for f in info["files"]:
            print("  %s (%s)" % (f["path"], why[f["reason"]]))


def _start_detached(run):
    """Start staged run by `guild run --start` in a process of its own
    session, detached from this terminal: closing it, or Ctrl-C here,
    does not stop the run (guild stop does). Say so."""
    import subprocess
    options = {}
    if IS_WINDOWS:  # pragma: no cover - exercised on Windows only
        options["creationflags"] = (subprocess.DETACHED_PROCESS |
                                    subprocess.CREATE_NEW_PROCESS_GROUP)
    else:
        options["start_new_session"] = True
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "run", "--start",
         run.id, "-y", "-q"], stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, GUILD_HOME=_guild_home()), close_fds=True,
        **options)
    print("Started %s in the background (guild watch %s follows it)"
          % (run.id, run.short_id))


def _parse_opt_flags(args):
    """-Fo NAME=VAL arguments as a dict of text values."""
    flags = {}
    for arg in args:
        name, sep, val = arg.partition("=")
        if not sep or not name.strip():
            raise UsageError("invalid optimizer flag '%s': expected "
                             "NAME=VAL" % arg)
        flags[name.strip()] = val
    return flags


def _proto_op(spec, opspec, raw_flags):
    """(opspec, flags, project dir) of a new run like run spec (--proto):
    its operation (unless opspec is given) and flags, updated by the
    flags given."""
    proto = _select_one(spec, list_runs())
    attrs = proto._attrs()
    target = attrs.get("proto") or attrs  # a batch's: its trials' op
    op = target["op"]
    if op.get("kind") != "script":
        raise OpError("--proto takes a run of a script, not of %s"
                      % _op_desc(attrs))
    flags = {n: encode_flag_val(v) for n, v in (target.get("flags")
                                                 or {}).items()}
    flags.update(raw_flags)
    project = attrs.get("project") or os.getcwd()
    return opspec or op.get("script") or op["name"], flags, project


def _same_completed_run(attrs):
    """The id of a completed run of attrs's operation with its flags, or
    None (run --needed)."""
    desc = _op_desc(attrs)
    for x in run_summaries():
        if x["status"] == "completed" and x["op"] == desc and \
                x["flags"] == attrs["flags"]:
            return x["id"]
    return None


def _trial_table(attrs):
    """(flag names, trials) a run would start: a batch's trials, or the
    run's own flags."""
    trials = batch_trials(attrs) if "proto" in attrs else [attrs["flags"]]
    return sorted(set().union(*trials)) if trials else [], trials


def _save_trials(attrs, dest):
    """Write the trials a run would start as CSV, or JSON if dest ends
    with .json (run --save-trials): a batch file `@dest` runs them."""
    names, trials = _trial_table(attrs)
    try:
        with open(dest, "w", newline="", encoding="utf-8") as f:
            if dest.lower().endswith(".json"):
                json.dump(trials, f, indent=2)
                f.write("\n")
            else:
                writer = csv.writer(f, lineterminator="\n")
                writer.writerow(names)
                for t in trials:
                    writer.writerow([_csv_cell(t.get(n)) for n in names])
    except OSError as e:
        raise GuildError("cannot write trials to '%s': %s"
                         % (dest, e.strerror))
    print("Saved %d trial(s) to %s" % (len(trials), dest))


def _shell_join(args):
    if IS_WINDOWS:  # pragma: no cover - exercised on Windows only
        import subprocess
        return subprocess.list2cmdline(args)
    import shlex
    return " ".join(shlex.quote(a) for a in args)


def _check_existing_options(args, batch_files):
    """--start and --restart run a run as it is (a restart with changed
    flags): anything that would make a new run is an error, not ignored."""
    verb = "--start" if args.start else "--restart"
    if args.start and args.restart:
        raise UsageError("use --start or --restart, not both")
    given = [("an operation ('%s')" % args.opspec, args.opspec),
             ("batch files", batch_files)] + [
        ("--" + name.replace("_", "-"), getattr(args, name))
        for name in ("stage", "stage_trials", "optimizer", "random_seed",
                     "print_trials", "fail_on_trial_error", "run_dir",
                     "help_op", "label", "gpus")]
    if args.max_trials is not None and not args.restart:
        given.append(("--max-trials", True))
    for what, value in given:
        if value not in (None, False, []):
            raise UsageError("%s cannot be used with %s: it runs the run as "
                             "it is (with --restart, NAME=VALUE changes its "
                             "flags)" % (what, verb))


def _run_prompt(args, attrs):
    verb = "stage" if args.stage else "run"
    proto = attrs.get("proto")
    optimizer = attrs["op"]["name"] if proto else None
    if optimizer == "tpe":
        scalar, maximize = _objective(attrs)
        n = attrs.get("max_trials") or DEFAULT_MAX_TRIALS
        what = "%s as a batch (tpe, %d trial%s, %s %s)" % (
            args.opspec, n, "" if n == 1 else "s",
            "maximize" if maximize else "minimize", scalar)
    elif proto:
        n = len(batch_trials(attrs))
        what = "%s as a batch (%s, %d trial%s)" % (
            args.opspec, "random search" if optimizer == "random"
            else "grid search", n, "" if n == 1 else "s")
    else:
        what = args.opspec
    flags = (proto or attrs)["flags"]
    lines = ["You are about to %s %s" % (verb, what)]
    lines += ["  %s: %s" % (n, encode_flag_val(flags[n]))
              for n in sorted(flags)]
    return "\n".join(lines) + "\nContinue?"


def _print_trials(attrs):
    names, trials = _trial_table(attrs)
    rows = [["#"] + names] + [
        [str(i)] + [encode_flag_val(t.get(n)) for n in names]
        for i, t in enumerate(trials, 1)]
    for line in _format_table(rows):
        print(line)


def _run_existing(args, raw_flags):
    spec = args.start or args.restart
    run = _select_one(spec, list_runs())
    _startable_attrs(run)
    if raw_flags and args.start:
        raise UsageError("flags cannot be changed with --start "
                         "(use --restart)")
    if args.background and not args.start:
        raise UsageError("--background starts a new run or a staged one "
                         "(--start), not a --restart")
    if args.max_trials is not None:
        attrs = run._attrs()
        if _field(attrs, "op", dict).get("name") != "tpe":
            raise UsageError("--max-trials cannot be used with --restart "
                             "but for a tpe batch (which goes on to N "
                             "trials): it runs the run as it is")
        if args.max_trials < 1:
            raise UsageError("--max-trials must be at least 1")
    if not _confirm("You are about to start %s (%s)\nContinue?"
                    % (run.id, run.op_desc), yes=args.yes):
        raise GuildError("aborted")
    if args.background:  # its own process claims it, as --start does
        if run.status != "staged":
            raise RunError("cannot start %s: status is '%s' but expected "
                           "'staged'" % (run.id, run.status))
        _start_detached(run)
        return 0
    with Lock(RUN_STATUS, timeout=60):
        status = _claim_staged(run)
        if status == "staged":
            if raw_flags:
                _update_flags(run, raw_flags, args.force_flags)
        elif args.start:
            raise RunError("cannot start %s: status is '%s' but expected "
                           "'staged' (use --restart to run it again)"
                           % (run.id, status))
        elif status in ("running", "pending"):
            raise RunError("cannot restart %s: it is %s" % (run.id, status))
        else:
            _update_flags(run, raw_flags, args.force_flags)
            set_run_pending(run)
            _remove(run.guild_path(EXIT_ATTRS))
            _remove(run.guild_path(PROC_ATTRS))
        if args.max_trials is not None:  # a tpe batch goes on to N
            _write_json(run.guild_path(RUN_ATTRS), dict(
                run._attrs(), max_trials=args.max_trials))
    return _exit_code(_start_run(run))


def _update_flags(run, raw_flags, force):
    """Change a run's flags for a restart: a batch's changes its trials."""
    if not raw_flags:
        return
    attrs = run._attrs()
    target = attrs.get("proto") or attrs
    changed = _given_flags(target["op"], raw_flags, force)
    if "proto" not in attrs and any(
            isinstance(v, (list, dict)) for v in changed.values()):
        raise FlagError("a restart cannot make a run a batch: stage or run "
                        "a new batch instead")
    tags = attrs.get("tags") or ()
    old_default = _default_label(target["flags"], tags)
    target["flags"] = dict(target["flags"], **changed)
    if "proto" in attrs:
        target["given"] = sorted(set(target.get("given") or ()) |
                                 set(changed))
        dists = [v for v in target["flags"].values() if is_distribution(v)]
        if dists and attrs["op"]["name"] == "+":
            raise FlagError("grid search cannot sample %s: restart with a "
                            "list or range[...]" % encode_flag_val(dists[0]))
    elif attrs.get("label") == old_default:
        attrs["label"] = _default_label(target["flags"], tags)
    _write_json(run.guild_path(RUN_ATTRS), attrs)


def _best_trial_lines(batch_run, attrs):
    """A batch's best trial by its objective, and that trial's flags."""
    scalar, maximize = _objective(attrs)
    trials = _batch_trial_summaries(batch_run)
    best = _best_trial(trials, scalar, maximize)
    if best is None:
        return ["best_trial: (no trial with %s)" % scalar]
    n, x = best
    return ["best_trial: %s (trial %d of %d, %s %s)" % (
        x["id"], n, len(trials), scalar, _num(x["scalars"][scalar])),
        "best_flags:"] + ["  %s: %s" % (name, encode_flag_val(val))
                          for name, val in sorted(x["flags"].items())]


def _build_runs_info_parser(p):
    p.description = "Show a run's attributes, flags and scalars."
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="the run (default: the newest)")
    p.add_argument("--scalar-stats", action="store_true",
                   help="show each scalar's min, max and count too")
    p.add_argument("--json", action="store_true",
                   help="print the run's attributes as JSON")
    _add_filter_args(p)


@_command("runs info", "show a run's attributes", _build_runs_info_parser)
def _cmd_runs_info(args):
    run = _select_one(args.run or "1", _listing(args)[1])
    info = _run_info(run)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=False))
        return 0
    lines = _info_lines(run, info, args.scalar_stats)
    attrs = _read_dict(run.guild_path(RUN_ATTRS))
    if _field(attrs, "op", dict).get("kind") == "batch":
        lines += _best_trial_lines(run, attrs)
    print("\n".join(lines))
    return 0


def _info_lines(run, info, with_stats=False):
    """runs info's text: the attributes, flags, scalars and comments."""
    lines = ["%s: %s" % item for item in _run_info_items(run, info)]
    lines.append("flags:")
    lines += ["  %s: %s" % (n, encode_flag_val(v))
              for n, v in info["flags"].items()]
    lines.append("scalars:")
    lines += ["  %s: %s" % (k, _scalar_text(st, with_stats))
              for k, st in info["scalars"].items()]
    lines += ["  (%s is damaged at byte %d: its later scalars are not read)"
              % (rel, offset) for rel, offset in
              _run_scalar_stats(run.dir)[1]]
    lines += ["comments:"] if info["comments"] else []
    lines += ["  [%d] %s@%s %s: %s" % (
        i, c["user"], c["host"], _format_time(c["time"]),
        " ".join(c["body"].split()))
        for i, c in enumerate(info["comments"], 1)]
    return lines


def _scalar_text(st, with_stats):
    if with_stats:
        return "%s (min %s, max %s, step %s, %d values)" % (
            _num(st["last"]), _num(st["min"]), _num(st["max"]), st["step"],
            st["count"])
    return "%s (step %s)" % (_num(st["last"]), st["step"])


def _add_list_args(p):
    p.add_argument("-a", "--all", action="store_true", help="show all runs")
    p.add_argument("-n", "--limit", dest="n", type=int, metavar="N",
                   help="show the first N runs (default %d)"
                   % DEFAULT_LIST_LIMIT)
    p.add_argument("-m", "--more", action="count", default=0,
                   help="show %d more runs (may be repeated: -mm)"
                   % DEFAULT_LIST_LIMIT)
    p.add_argument("-d", "--deleted", action="store_true",
                   help="list the deleted runs (the trash)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show each run's attributes under its row")
    p.add_argument("--json", action="store_true",
                   help="print the runs as a JSON list (every run the "
                   "filters select)")
    _add_filter_args(p)


def _build_runs_parser(p):
    p.description = ("List runs (the default), show one, stop, delete, "
                     "restore or purge some. RUN is an index from the "
                     "listing (1 is the newest), an id or an id prefix.")
    _add_list_args(p)


def _build_runs_list_parser(p):
    p.description = "List runs, newest first."
    _add_list_args(p)


@_command("runs", "list, show, stop, delete or restore runs",
          _build_runs_parser)
@_command("runs list", "list runs (newest first)", _build_runs_list_parser)
def _cmd_runs_list(args):
    summaries, runs = _listing(args, deleted=args.deleted)
    if args.json:
        print(json.dumps([_summary_json(x, run.dir) for x, run in
                          zip(summaries, runs)], indent=2))
        return 0
    limit = None if args.all else (
        (args.n or DEFAULT_LIST_LIMIT) + args.more * DEFAULT_LIST_LIMIT)
    shown = summaries if limit is None else summaries[:limit]
    rows = _format_table(_summary_rows(shown))
    for line, run in zip(rows, runs):
        print(line)
        if args.verbose:
            for item in _run_info_items(run):
                print("  %s: %s" % item)
    if len(shown) < len(summaries):
        print("Showing the first %d runs (%d total) - use --all to show "
              "all or -m to show more" % (len(shown), len(summaries)),
              file=sys.stderr)
    return 0


def _summary_json(x, run_dir):
    """A run in `runs --json` (keys documented in the README)."""
    return {"id": x["id"], "operation": x["op"], "status": x["status"],
            "label": x["label"], "tags": x["tags"], "marked": x["marked"],
            "created": x["created"], "started": x["started"],
            "stopped": x["stopped"], "exit_status": x["exit_status"],
            "batch": x["batch"], "run_dir": run_dir, "flags": x["flags"],
            "scalars": x["scalars"], "step": x["step"]}


def _build_stop_parser(p):
    p.description = ("Stop running runs: a script's process group gets "
                     "SIGTERM and its run ends terminated; stopping a queue "
                     "stops its run, then the queue.")
    _add_runs_args(p, "stop", "the newest running run; ':' for all")


@_command("stop", "stop running runs", _build_stop_parser)
@_command("runs stop", "stop running runs", _build_stop_parser)
def _cmd_stop(args):
    if not args.runs:  # the newest *running* run, as in Guild AI
        args.status_running = True
    running = _runs_to_act_on(args, "stop", latest=True,
                              keep=lambda run: run.status == "running")
    if not running:
        return 0
    for run in running:
        if _stop_run(run):
            print("Stopping %s (%s)" % (run.short_id, run.op_desc))
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for run in running:
        _finish_stopped(run, deadline)
    return 0


def _build_runs_delete_parser(p):
    p.description = ("Delete runs: they move to the trash, from where "
                     "'runs restore' brings them back.")
    _add_runs_args(p, "delete")
    p.add_argument("-p", "--permanent", action="store_true",
                   help="delete for good, not to the trash")


@_command("runs delete", "delete runs (to the trash)",
          _build_runs_delete_parser, aliases=["rm"])
def _cmd_runs_delete(args):
    summaries, selected = _select_or_all(args)
    if not selected:
        print("Nothing to delete")
        return 0
    running = [r for r in selected if r.status == "running"]
    if running:
        raise RunError("cannot delete running run %s - stop it first"
                       % running[0].id)
    _confirm_runs(args, "permanently delete" if args.permanent
                  else "delete", summaries, selected)
    for run in selected:
        if args.permanent:
            shutil.rmtree(run.dir)
        else:
            _move_run(run, _trash_runs_dir())
    print("%s %d run(s)" % ("Permanently deleted" if args.permanent
                            else "Deleted", len(selected)))
    return 0


def _build_runs_restore_parser(p):
    p.description = "Bring deleted runs back from the trash."
    _add_runs_args(p, "restore", "every deleted run")


@_command("runs restore", "bring deleted runs back from the trash",
          _build_runs_restore_parser)
def _cmd_runs_restore(args):
    return _act_on_runs(args, "restore", "Restored", _restore_run,
                        deleted=True)


def _restore_run(run):
    restored = _move_run(run, _runs_dir())
    if restored.status == "staged":
        _index_put("staged", _index_name(restored.id,
                                         restored.get("created")), {})


def _build_runs_purge_parser(p):
    p.description = "Delete runs in the trash for good."
    _add_runs_args(p, "purge", "every deleted run")


@_command("runs purge", "delete runs in the trash for good",
          _build_runs_purge_parser)
def _cmd_runs_purge(args):
    return _act_on_runs(args, "purge", "Purged",
                        lambda run: shutil.rmtree(run.dir), deleted=True)


def _update_attrs(run, change):
    """change(attrs) applied to the run's attributes and saved; under a
    lock, so that two commands changing one run both count."""
    with Lock("run-attrs", timeout=60):
        attrs = run._attrs()
        change(attrs)
        _write_json(run.guild_path(RUN_ATTRS), attrs)


def _run_file_list(run, include_guild):
    """The relative paths (with /) of a run's files, sorted; a symlink
    (to a file or a directory, or dangling) is a file here, never
    followed."""
    paths = []
    for root, dirs, files in os.walk(run.dir):
        dirs.sort()
        if not include_guild and root == run.dir:
            dirs[:] = [d for d in dirs if d != ".guild"]
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in sorted(files + links):
            rel = os.path.relpath(os.path.join(root, name), run.dir)
            paths.append(rel.replace(os.sep, "/"))
    return paths


def _build_export_parser(p):
    p.description = (
        "Copy runs (default: every run the filters select) into directory "
        "DEST, or into a zip archive if DEST ends with .zip, to import "
        "them into another store with 'guild import'. A run already there "
        "is skipped.")
    p.add_argument("dest", metavar="DEST", help="a directory or FILE.zip")
    _add_runs_args(p, "export")
    p.add_argument("-m", "--move", action="store_true",
                   help="delete the runs from the store once exported")
    p.add_argument("-r", "--copy-resources", action="store_true",
                   help="accepted: a run's files are always all copied")


@_command("export", "copy runs to a directory or a zip archive",
          _build_export_parser)
@_command("runs export", "copy runs to a directory or a zip archive",
          _build_export_parser)
def _cmd_export(args):
    selected = _runs_to_act_on(args, "export")
    if not selected:
        return 0
    running = [r for r in selected if r.status in ("running", "pending")]
    if running:
        raise RunError("cannot export run %s: it is %s" % (
            running[0].id, running[0].status))
    zipped = args.dest.lower().endswith(".zip")
    done = (_export_zip if zipped else _export_dir)(selected, args.dest)
    for run in done if args.move else ():
        shutil.rmtree(run.dir)
    print("%s %d run(s) to %s" % ("Moved" if args.move else "Exported",
                                  len(done), args.dest))
    return 0


def _export_dir(runs, dest):
    """Copy runs into directory dest (each whole, then renamed into
    place); return those copied, after a word on each one skipped."""
    _ensure_dir(dest)
    done = []
    for run in runs:
        target = os.path.join(dest, run.id)
        if os.path.exists(target):
            print("Skipping %s: already in %s" % (run.short_id, dest))
            continue
        partial = target + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(run.dir, partial, symlinks=True)
        os.rename(partial, target)
        done.append(run)
    return done


_ZIP_SYMLINK = 0o120777  # a zip entry's Unix mode for a symlink


def _export_zip(runs, dest):
    """Add runs to zip archive dest (written anew, then renamed into
    place); return those added. A symlink in a run is stored as a link
    (_unzip_runs makes it again), not as what it points to."""
    import zipfile
    tmp = dest + ".partial"
    done = []
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
        present = set()
        if os.path.exists(dest):
            with zipfile.ZipFile(dest) as old:
                for item in old.infolist():
                    out.writestr(item, old.read(item))
                    present.add(item.filename.split("/", 1)[0])
        for run in runs:
            if run.id in present:
                print("Skipping %s: already in %s" % (run.short_id, dest))
                continue
            for rel in _run_file_list(run, include_guild=True):
                src = os.path.join(run.dir, rel.replace("/", os.sep))
                name = "%s/%s" % (run.id, rel)
                if os.path.islink(src):  # kept a link, as a directory export
                    info = zipfile.ZipInfo(name, time.localtime(
                        os.lstat(src).st_mtime)[:6])
                    info.create_system = 3  # Unix: external_attr is a mode
                    info.external_attr = _ZIP_SYMLINK << 16
                    out.writestr(info, os.readlink(src))
                else:
                    out.write(src, name)
            done.append(run)
    os.replace(tmp, dest)
    return done


def _build_import_parser(p):
    p.description = (
        "Bring runs exported with 'guild export' (a directory or a .zip) "
        "into the store, ids, statuses and scalars kept. RUN selects among "
        "the archive's runs (an id or prefix, or an index as 'guild runs' "
        "would list the archive). A run already in the store is skipped.")
    p.add_argument("archive", metavar="ARCHIVE",
                   help="a directory or FILE.zip from 'guild export'")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="runs to import (default: all)")
    p.add_argument("-y", "--yes", action="store_true",
                   help="do not ask for confirmation")
    p.add_argument("-m", "--move", action="store_true",
                   help="delete the runs from the archive directory once "
                   "imported")
    p.add_argument("-r", "--copy-resources", action="store_true",
                   help="accepted: a run's files are always all copied")


@_command("import", "bring exported runs into the store",
          _build_import_parser)
@_command("runs import", "bring exported runs into the store",
          _build_import_parser)
def _cmd_import(args):
    import tempfile
    if not os.path.exists(args.archive):
        raise GuildError("'%s' does not exist" % args.archive)
    zipped = os.path.isfile(args.archive)
    if zipped and args.move:
        raise UsageError("--move takes an archive directory, not a zip")
    runs_dir = _runs_dir()
    _ensure_dir(runs_dir)
    # A zip is unpacked next to the store, so each run moves in by rename.
    with tempfile.TemporaryDirectory(prefix="import-",
                                     dir=_guild_home()) as unpacked:
        source = _unzip_runs(args.archive, unpacked) if zipped \
            else args.archive
        summaries = _archive_summaries(source)
        runs = _runs_of(summaries, os.path.abspath(source))
        selected = select_runs(args.runs, runs) if args.runs else runs
        if not selected:
            print("Nothing to import")
            return 0
        if not args.yes:
            print("You are about to import the following runs:")
            for line in _format_table(_summary_rows(summaries, selected)):
                print("  " + line)
            if not _confirm("Import %d run(s)?" % len(selected)):
                raise GuildError("aborted")
        count = 0
        for run in selected:
            if os.path.exists(os.path.join(runs_dir, run.id)):
                print("Skipping %s: already in the store" % run.short_id)
                continue
            _import_run(run, runs_dir, zipped or args.move, unpacked)
            count += 1
    print("Imported %d run(s)" % count)
    return 0


def _archive_summaries(source):
    """Summaries of the runs in directory source, newest first, read
    without the listing cache (which would be written beside it)."""
    now = time.time_ns()
    summaries = []
    for name in sorted(os.listdir(source)):
        run_dir = os.path.join(source, name)
        try:
            mtime = os.stat(run_dir + _GUILD_SUBDIR).st_mtime_ns
        except OSError:
            continue
        summary = _run_summary(name, run_dir, mtime, now)
        if summary is not None:
            summaries.append(summary)
    summaries.sort(key=lambda x: (x["started"] or x["created"] or 0,
                                  x["id"]), reverse=True)
    return summaries


def _unzip_runs(archive, dest):
    """Unpack zip archive into dest, refusing paths that leave it."""
    import zipfile
    try:
        with zipfile.ZipFile(archive) as z:
            root = os.path.realpath(dest)
            for name in z.namelist():
                target = os.path.realpath(os.path.join(dest, name))
                if not target.startswith(root + os.sep):
                    raise GuildError("'%s' holds a path outside the "
                                     "archive: %s" % (archive, name))
            z.extractall(dest)
            # Links last, once every file is written: nothing is written
            # through a link from the archive.
            for item in z.infolist():
                if item.create_system == 3 and \
                        item.external_attr >> 16 == _ZIP_SYMLINK:
                    path = os.path.join(dest, item.filename)
                    try:
                        os.remove(path)
                        os.symlink(z.read(item).decode("utf-8"), path)
                    except OSError:  # no symlinks here (Windows)
                        with open(path, "wb") as f:
                            f.write(z.read(item))
    except zipfile.BadZipFile as e:
        raise GuildError("'%s' is not a zip archive: %s" % (archive, e))
    return dest


def _import_run(run, runs_dir, move, scratch):
    """Put run into the store under runs_dir: moved, or copied whole into
    scratch (a directory beside the store) then renamed into place, so a
    listing never sees half a run; a staged run is queued."""
    target = os.path.join(runs_dir, run.id)
    moved = False
    if move:
        try:
            os.rename(run.dir, target)
            moved = True
        except OSError:  # another file system: copy, then delete
            pass
    if not moved:
        partial = os.path.join(scratch, "copy-" + run.id)
        shutil.copytree(run.dir, partial, symlinks=True)
        os.rename(partial, target)
        if move:
            shutil.rmtree(run.dir)
    imported = Run(run.id, target)
    if imported.status == "staged":
        _index_put("staged", _index_name(run.id, imported.get("created")),
                   {})


def _build_label_parser(p):
    p.description = ("Change the labels of runs. ${flag} in VAL is replaced "
                     "by each run's flag value, ${label} by its label.")
    _add_runs_args(p, "label", "the newest; ':' for all")
    g = p.add_argument_group("changes (give one)")
    g.add_argument("-s", "--set", metavar="VAL", help="set the label")
    g.add_argument("-a", "--append", metavar="VAL", help="add VAL at the "
                   "end")
    g.add_argument("-p", "--prepend", metavar="VAL",
                   help="add VAL at the start")
    g.add_argument("-rm", "--remove", metavar="VAL",
                   action="append", help="remove the word(s) VAL (may be "
                   "repeated)")
    g.add_argument("-c", "--clear", action="store_true",
                   help="clear the label")


@_command("label", "set or change run labels", _build_label_parser)
def _cmd_label(args):
    changes = [(k, getattr(args, k)) for k in
               ("set", "append", "prepend", "remove") if getattr(args, k)
               is not None] + ([("clear", None)] if args.clear else [])
    if len(changes) != 1:
        raise UsageError("give one of --set, --append, --prepend, --remove "
                         "or --clear")
    (change, text), = changes

    def relabel(attrs):
        label = attrs.get("label") or ""
        if change == "remove":
            label = _remove_words(label, text)
        elif change == "clear":
            label = ""
        else:
            value = render_label(text.replace("${label}", label),
                                 attrs.get("flags") or {})
            label = {"set": value, "append": "%s %s" % (label, value),
                     "prepend": "%s %s" % (value, label)}[change].strip()
        attrs["label"] = label
    return _act_on_runs(args, "label", "Labeled",
                        lambda run: _update_attrs(run, relabel), latest=True)


def _remove_words(label, parts):
    """label without each part that stands as whole words in it."""
    for part in parts:
        label = re.sub(r"(^|\s)%s(?=\s|$)" % re.escape(part), " ", label)
    return " ".join(label.split())


def _build_tag_parser(p):
    p.description = ("Add or delete the tags of runs. Tags select runs "
                     "with the filter -Ft TAG; runs info shows them.")
    _add_runs_args(p, "tag", "the newest; ':' for all")
    p.add_argument("-a", "--add", metavar="TAG", action="append",
                   default=[], help="add TAG (may be repeated)")
    p.add_argument("-d", "--delete", metavar="TAG", action="append",
                   default=[], help="delete TAG (may be repeated)")
    p.add_argument("-c", "--clear", action="store_true",
                   help="delete every tag first")
    p.add_argument("-s", "--sync-labels", action="store_true",
                   help="add added tags to the label and take deleted "
                   "ones out of it")
    p.add_argument("--list-all", action="store_true",
                   help="list the tags of the runs, changing nothing")


@_command("tag", "add or delete run tags", _build_tag_parser)
def _cmd_tag(args):
    if args.list_all:
        _summaries, selected = _select_or_all(args)
        tags = {t for run in selected for t in run.get("tags") or ()}
        for tag in sorted(tags):
            print(tag)
        return 0
    if not (args.add or args.delete or args.clear):
        raise UsageError("give --add, --delete, --clear or --list-all")

    def retag(attrs):
        old = list(attrs.get("tags") or ())
        gone = set(old if args.clear else ()) | set(args.delete)
        tags = [t for t in old if t not in gone]
        tags += [t for t in args.add if t not in tags]
        attrs["tags"] = tags
        if args.sync_labels:
            label = _remove_words(attrs.get("label") or "",
                                  sorted(gone - set(tags)))
            new = [t for t in args.add if t not in label.split()]
            attrs["label"] = " ".join(new + [label]).strip()
    return _act_on_runs(args, "tag", "Tagged",
                        lambda run: _update_attrs(run, retag), latest=True)


def _build_comment_parser(p):
    p.description = ("Add, list or delete the comments of runs. runs info "
                     "shows them; -Fc VAL selects runs by them.")
    _add_runs_args(p, "comment", "the newest; ':' for all")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-a", "--add", metavar="COMMENT",
                   help="add COMMENT")
    g.add_argument("-l", "--list", action="store_true",
                   help="list the comments, numbered")
    g.add_argument("-d", "--delete", metavar="INDEX", type=int,
                   help="delete comment INDEX (as --list numbers them)")
    g.add_argument("-c", "--clear", action="store_true",
                   help="delete every comment")
    p.add_argument("-u", "--user", metavar="USER",
                   help="the author of a new comment (USER or USER@HOST; "
                   "default: you on this host)")


@_command("comment", "add, list or delete run comments",
          _build_comment_parser)
def _cmd_comment(args):
    if args.list:
        _summaries, selected = _select_or_all(args, latest=True)
        for run in selected:
            _print_comments(run)
        return 0
    if args.add is not None:
        if not args.add.strip():
            raise UsageError("a comment cannot be empty")
        user, _, host = (args.user or _user_name()).partition("@")
        comment = {"body": args.add, "user": user, "host": host or HOST,
                   "time": _timestamp()}
        change = lambda attrs: attrs.setdefault("comments", []).append(
            comment)
    elif args.delete is not None:
        def change(attrs):
            comments = attrs.get("comments") or []
            if not 1 <= args.delete <= len(comments):
                raise UsageError("run %s has no comment %d (it has %d)" % (
                    attrs.get("id", "")[:SHORT_ID_LEN], args.delete,
                    len(comments)))
            del comments[args.delete - 1]
    elif args.clear:
        def change(attrs):
            attrs["comments"] = []
    else:
        raise UsageError("give --add COMMENT, --list, --delete INDEX or "
                         "--clear (there is no editor)")
    return _act_on_runs(args, "comment", "Changed the comments of",
                        lambda run: _update_attrs(run, change), latest=True)


def _user_name():
    try:
        import getpass
        return getpass.getuser()
    except (ImportError, KeyError, OSError):  # no user name to be had
        return ""


def _print_comments(run):
    print("%s (%s):" % (run.short_id, run.op_desc))
    for i, c in enumerate(run.get("comments") or (), 1):
        print("  [%d] %s@%s %s" % (i, c.get("user", ""), c.get("host", ""),
                                   _format_time(c.get("time"))))
        for line in c.get("body", "").splitlines():
            print("    " + line)


def _build_mark_parser(p):
    p.description = ("Mark runs (the newest unmarked one by default), or "
                     "with --clear unmark them (every marked one by "
                     "default). -Fm and -Fn select marked and unmarked "
                     "runs.")
    _add_runs_args(p, "mark", "see above")
    p.add_argument("-c", "--clear", action="store_true",
                   help="unmark the runs")


@_command("mark", "mark or unmark runs", _build_mark_parser)
def _cmd_mark(args):
    if not args.runs:  # as Guild AI: the newest unmarked, or all marked
        args.filter_marked = bool(args.clear)

    def mark(attrs):
        attrs["marked"] = not args.clear
    verb, done = ("unmark", "Unmarked") if args.clear else ("mark",
                                                              "Marked")
    return _act_on_runs(args, verb, done,
                        lambda run: _update_attrs(run, mark),
                        latest=not args.clear)


def _build_compare_parser(p):
    p.description = (
        "A table of runs: run, operation, started, time, status, label, "
        "each flag, the step of the last scalar and the last value of each "
        "scalar (output lines such as 'loss: 0.31'). Batch runs are left "
        "out unless --include-batch. COLS is a comma-separated list of "
        "column specs: =FLAG, .ATTR (%s), [QUALIFIER] SCALAR [step] "
        "(QUALIFIER: %s; 'step' gives the step of that value), or a "
        "column's name; each may end with 'as HEADER'."
        % (", ".join(COMPARE_ATTRS), ", ".join(SCALAR_QUALIFIERS)))
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="runs to compare (default: all)")
    p.add_argument("-c", "--cols", "--columns", metavar="COLS",
                   help="add these columns")
    p.add_argument("-cc", "--strict-cols", metavar="COLS",
                   help="show only these columns (and run)")
    p.add_argument("-s", "--all-scalars", action="store_true",
                   help="include system scalars (sys/...)")
    p.add_argument("-r", "--skip-core", action="store_true",
                   help="leave out the columns operation, started, time, "
                   "status and label")
    p.add_argument("-u", "--skip-unchanged", action="store_true",
                   help="leave out columns whose value is the same in "
                   "every run")
    p.add_argument("--include-batch", action="store_true",
                   help="include batch runs")
    p.add_argument("--min", metavar="COL", help="sort by COL, lowest first")
    p.add_argument("--max", metavar="COL",
                   help="sort by COL, highest first")
    p.add_argument("-n", "--top", "--limit", type=int, metavar="N",
                   help="show the first N runs")
    p.add_argument("-t", "--table", action="store_true",
                   help="print a table (the default)")
    p.add_argument("--csv", metavar="PATH",
                   help="write CSV to PATH (- for standard output)")
    _add_filter_args(p)


@_command("compare", "compare runs by flags and scalars",
          _build_compare_parser)
def _cmd_compare(args):
    summaries, runs = _listing(args)
    if args.runs:
        wanted = {r.id for r in select_runs(args.runs, runs)}
        summaries = [x for x in summaries if x["id"] in wanted]
    if not args.include_batch:
        summaries = [x for x in summaries if x["kind"] != "batch"]
    columns, rows = compare_table(
        summaries, _runs_dir(), args.cols, args.strict_cols,
        args.all_scalars, args.skip_core, args.skip_unchanged)
    if args.min and args.max:
        raise UsageError("--min and --max cannot be used together")
    sort_col = args.min or args.max
    if sort_col:
        if sort_col not in columns:
            raise UsageError("unknown column '%s' (columns: %s)"
                             % (sort_col, ", ".join(columns)))
        rows = _sort_rows(rows, sort_col, descending=bool(args.max))
    if args.top is not None:
        rows = rows[:args.top]
    if args.csv == "-":
        _write_compare_csv(sys.stdout, columns, rows)
        return 0
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8",
                  errors="backslashreplace") as out:
            _write_compare_csv(out, columns, rows)
        return 0
    table = [columns] + [[_table_cell(c, r.get(c)) for c in columns]
                         for r in rows]
    for line in _format_table(table):
        print(line)
    return 0


def _build_select_parser(p):
    p.description = (
        "Print the id of the newest run the filters select, or with --min "
        "or --max COL of the run with the lowest or highest COL among the "
        "runs that have it (COL is a compare column spec, such as loss, "
        "'max acc' or =lr). For scripts: guild run --restart $(guild "
        "select -Fo train.py --min loss).")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="runs to choose from (default: every run the "
                   "filters select)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--min", "-min", metavar="COL",
                   help="the run with the lowest COL")
    g.add_argument("--max", "-max", metavar="COL",
                   help="the run with the highest COL")
    p.add_argument("-A", "--all", action="store_true",
                   help="print every selected run (best first with --min "
                   "or --max)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-s", "--short-id", action="store_true",
                     help="print the short id")
    out.add_argument("-p", "--path", "--dir", action="store_true",
                     help="print the run directory")
    out.add_argument("-a", "--attr", metavar="ATTR",
                     help="print attribute ATTR (%s, flags ...)"
                     % ", ".join(COMPARE_ATTRS))
    _add_filter_args(p)


@_command("select", "print the id of the newest or best matching run",
          _build_select_parser)
def _cmd_select(args):
    summaries, runs = _listing(args)
    if args.runs:
        chosen = {r.id for r in select_runs(args.runs, runs)}
        summaries = [x for x in summaries if x["id"] in chosen]
    if not summaries:
        raise RunError("no matching runs")
    col = args.min or args.max
    if col:
        summaries = _best_first(summaries, col, bool(args.max))
        if not summaries:
            raise RunError("no run has a value for '%s'" % col)
    if len(summaries) > 1 and args.runs and not (args.all or col):
        raise RunError("%s match %d runs: give one, or use --all"
                       % (" ".join(args.runs), len(summaries)))
    runs_dir = _runs_dir()
    for x in summaries if args.all else summaries[:1]:
        print(_selected_text(args, x, Run(x["id"], os.path.join(
            runs_dir, x["id"]))))
    return 0


def _best_first(summaries, col, highest):
    """The summaries that have a value for column spec col, best first
    (ties: newest first)."""
    spec = _parse_colspec(col)
    columns, rows = compare_rows(summaries, all_scalars=True)
    if spec["kind"] == "column" and spec["name"] not in columns:
        spec["kind"] = "scalar"  # that no run has: none is the best
    values = _colspec_values(spec, summaries, columns, rows, _runs_dir())
    have = [(val, i) for i, val in enumerate(values) if isinstance(
        val, (int, float)) and not isinstance(val, bool) and val == val]
    have.sort(key=lambda vi: (-vi[0] if highest else vi[0], vi[1]))
    return [summaries[i] for _val, i in have]


def _selected_text(args, x, run):
    if args.path:
        return run.dir
    if args.short_id:
        return run.short_id
    if args.attr:
        missing = object()
        val = _attr_value(x, args.attr, _timestamp()) if args.attr in \
            COMPARE_ATTRS else run.get(args.attr, missing)
        if val is missing:
            raise RunError("no such run attribute '%s'" % args.attr)
        return val if isinstance(val, str) else _select_attr_text(val)
    return run.id


def _select_attr_text(val):
    if val is None:
        return ""
    if isinstance(val, dict):
        return "\n".join("%s: %s" % (k, encode_flag_val(val[k]))
                         for k in sorted(val))
    return encode_flag_val(val)


def _build_diff_parser(p):
    p.description = (
        "Compare two runs (default: the two newest the filters select, the "
        "older first): their attributes, flags and source snapshots, or "
        "only what the options name. With --working, one run's source "
        "snapshot against its project as it is now.")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="two runs, or one with --working")
    p.add_argument("-f", "--flags", action="store_true",
                   help="compare the flags")
    p.add_argument("-a", "--attrs", action="store_true",
                   help="compare the attributes (as runs info shows them)")
    p.add_argument("-O", "--output", action="store_true",
                   help="compare what the runs printed")
    p.add_argument("-s", "--sourcecode", action="store_true",
                   help="compare the source snapshots")
    p.add_argument("-p", "--path", metavar="FILE", action="append",
                   default=[], help="compare the runs' FILE (repeatable)")
    p.add_argument("-w", "--working", action="store_true",
                   help="compare a run's source snapshot with its project")
    p.add_argument("-c", "--cmd", metavar="CMD",
                   help="compare each pair of files with program CMD (such "
                   "as 'diff -u' or meld) instead")
    _add_filter_args(p)


@_command("diff", "compare two runs", _build_diff_parser)
def _cmd_diff(args):
    summaries, runs = _listing(args)
    wanted = 1 if args.working else 2
    if args.runs and len(args.runs) != wanted:
        raise UsageError("diff takes %s" % (
            "one run with --working" if args.working else
            "two runs (or none: the two newest)"))
    chosen = [_select_one(spec, runs) for spec in args.runs] or \
        list(reversed(runs[:wanted]))
    if len(chosen) < wanted:
        raise RunError("diff needs %d run%s: %d match%s" % (
            wanted, "s" if wanted > 1 else "", len(chosen),
            "" if len(chosen) != 1 else "es"))
    pairs = _diff_pairs(args, chosen)
    if args.cmd:
        return _diff_with_program(args.cmd, pairs)
    for (name_a, text_a), (name_b, text_b) in pairs:
        sys.stdout.writelines(difflib.unified_diff(
            _diff_lines(text_a), _diff_lines(text_b), name_a, name_b))
    return 0


def _diff_lines(text):
    lines = text.splitlines(True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"  # each diff line on a line of its own
    return lines


def _diff_pairs(args, chosen):
    """[((name, text), (name, text))] to compare, in order."""
    if args.working:
        run = chosen[0]
        project = run.get("project")
        if not project or not os.path.isdir(project):
            raise RunError("the project of run %s (%s) is gone" % (
                run.short_id, project or "unknown"))
        files = sorted(set(run.get("sourcecode") or ()) | set(
            _source_snapshot(project, _field(run.get("op"), "script", str),
                             [_guild_home()])[0]))
        return [(_diff_file(run.dir, rel, run.short_id),
                 _diff_file(project, rel, project)) for rel in files]
    run_a, run_b = chosen
    every = not (args.flags or args.attrs or args.output or
                 args.sourcecode or args.path)
    pairs = []
    if every or args.attrs:
        pairs.append(tuple(
            ("%s/attributes" % r.short_id, "".join(
                "%s: %s\n" % item for item in _run_info_items(r)
                if item[0] not in ("id", "run_dir")))
            for r in chosen))
    if every or args.flags:
        pairs.append(tuple(
            ("%s/flags" % r.short_id, "".join(
                "%s: %s\n" % (n, encode_flag_val(v))
                for n, v in sorted(r.flags.items()))) for r in chosen))
    if every or args.sourcecode:
        files = sorted(set(run_a.get("sourcecode") or ()) |
                       set(run_b.get("sourcecode") or ()))
        pairs += [tuple(_diff_file(r.dir, rel, r.short_id) for r in chosen)
                  for rel in files]
    if args.output:
        pairs.append(tuple(_diff_file(r.dir, ".guild/" + OUTPUT_FILE,
                                      r.short_id) for r in chosen))
    for rel in args.path:
        for r in chosen:
            _run_file(r, rel)  # refused if it leaves the run
        pairs.append(tuple(_diff_file(r.dir, rel, r.short_id)
                           for r in chosen))
    return pairs


def _diff_file(root, rel, prefix):
    """(name, text) of file rel under root; empty if there is none. A
    name from run.json that leaves root is refused, not read."""
    path = _path_inside(root, rel)
    if path is None:
        raise RunError("'%s' is not a path inside %s" % (rel, prefix))
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        text = ""
    # named by where it is (no `..`): --cmd writes it to a file so named
    return "%s/%s" % (prefix, os.path.relpath(
        path, os.path.realpath(root)).replace(os.sep, "/")), text


def _diff_with_program(cmd, pairs):
    """Run program cmd on each pair of texts, written to temp files
    named after them; its exit status is not an error (diff says 1)."""
    import shlex
    import subprocess
    import tempfile
    argv = shlex.split(cmd, posix=not IS_WINDOWS)
    if not argv or not shutil.which(argv[0]):
        raise GuildError("diff program '%s' not found: install it or give "
                         "another with --cmd" % (argv[0] if argv else cmd))
    with tempfile.TemporaryDirectory(prefix="guild-diff-") as tmp:
        for pair in pairs:
            paths = []
            for side, (name, text) in zip("ab", pair):
                path = os.path.join(tmp, side, *name.split("/"))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                paths.append(path)
            sys.stdout.flush()
            subprocess.call(argv + paths)
    return 0


def _build_watch_parser(p):
    p.description = (
        "Show a run's output and follow it as it grows until the run ends "
        "(default: the newest running run the filters select). Ctrl-C "
        "stops watching; the run goes on.")
    p.add_argument("run", nargs="?", metavar="RUN", help="the run")
    p.add_argument("-p", "--pid", metavar="PID",
                   help="the run whose process is PID (or whose pid is in "
                   "file PID)")
    _add_filter_args(p)


@_command("watch", "follow a run's output until it ends",
          _build_watch_parser)
def _cmd_watch(args):
    summaries, runs = _listing(args)
    if args.pid:
        run = _run_of_pid(args.pid, runs)
    elif args.run:
        run = _select_one(args.run, runs)
    else:
        running = [r for x, r in zip(summaries, runs)
                   if x["status"] in ("running", "pending")]
        if not running:
            raise RunError("no running run to watch: give a RUN to show "
                           "a finished one's output")
        run = running[0]
    sys.stderr.write("Watching %s (%s); Ctrl-C stops watching, not the "
                     "run\n" % (run.short_id, run.op_desc))
    sys.stderr.flush()
    try:
        _follow_output(run)
    except KeyboardInterrupt:  # the run is not ours to stop
        return 0
    sys.stderr.write("Run %s %s\n" % (run.short_id, run.status))
    return 0


def _run_of_pid(text, runs):
    """The run whose recorded process (or script process) has pid text,
    or the pid written in file text."""
    if not text.isdigit():
        try:
            with open(text) as f:
                pid_text = f.read().strip()
        except OSError as e:
            raise GuildError("cannot read pid file '%s': %s"
                             % (text, e.strerror))
        if not pid_text.isdigit():
            raise GuildError("pid file '%s' holds no pid" % text)
        text = pid_text
    pid = int(text)
    for run in runs:
        proc = _read_json(run.guild_path(PROC_ATTRS))
        if not isinstance(proc, dict):
            continue
        child = proc.get("child") or {}
        if pid in (proc.get("pid"), child.get("pid")) and \
                proc.get("host", HOST) == HOST:
            return run
    raise RunError("no run has process %d" % pid)


def _follow_output(run):
    """Write the run's output to stdout as it grows, until it ends."""
    path = run.guild_path(OUTPUT_FILE)
    offset, delay = 0, 0.01
    while True:
        ended = run.status not in ("running", "pending", "staged")
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read(OUTPUT_CHUNK)
        except FileNotFoundError:
            chunk = b""
        if chunk:
            _write_stdout(chunk)
            offset += len(chunk)
            delay = 0.01
            continue
        if ended:
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _build_ls_parser(p):
    p.description = ("List the files of a run: its source snapshot and "
                     "what it wrote.")
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="the run (default: the newest the filters select)")
    p.add_argument("-p", "--path", metavar="PATH",
                   help="only files under PATH (a directory or file of the "
                   "run)")
    p.add_argument("-s", "--sourcecode", action="store_true",
                   help="only the source snapshot")
    p.add_argument("-a", "--all", action="store_true",
                   help="include guild.py's own files in .guild")
    p.add_argument("-f", "--full-path", action="store_true",
                   help="print full paths, one a line")
    p.add_argument("-n", "--no-format", action="store_true",
                   help="print paths one a line, with no heading")
    _add_filter_args(p)


@_command("ls", "list a run's files", _build_ls_parser)
def _cmd_ls(args):
    run = _select_one(args.run or "1", _listing(args)[1])
    paths = _run_file_list(run, args.all)
    if args.sourcecode:
        source = set(run.get("sourcecode") or ())
        paths = [rel for rel in paths if rel in source]
    if args.path:
        _run_file(run, args.path)  # refused if it leaves the run
        under = os.path.normpath(args.path).replace(os.sep, "/")
        paths = [rel for rel in paths if under == "." or rel == under
                 or rel.startswith(under + "/")]
    if args.full_path:
        paths = [os.path.join(run.dir, rel.replace("/", os.sep))
                 for rel in paths]
    elif not args.no_format:
        print("%s:" % run.dir)
        paths = ["  " + rel for rel in paths]
    for line in paths:
        print(line)
    return 0


def _build_cat_parser(p):
    p.description = "Print a run's output or one of its files."
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="the run (default: the newest the filters select)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("-O", "--output", action="store_true",
                   help="show what the run printed")
    g.add_argument("-p", "--path", help="show file PATH of the run")
    p.add_argument("-s", "--sourcecode", action="store_true",
                   help="PATH is in the source snapshot (where it is "
                   "anyway: accepted for Guild AI's sake)")
    _add_filter_args(p)


@_command("cat", "show a run's output or a file", _build_cat_parser)
def _cmd_cat(args):
    run = _select_one(args.run or "1", _listing(args)[1])
    if args.output:
        path = run.guild_path(OUTPUT_FILE)
    elif args.path:
        path = _run_file(run, args.path)
    else:
        raise UsageError("specify -O/--output or -p PATH")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise GuildError("%s does not exist for run %s" % (
            "output" if args.output else args.path, run.id))
    _write_stdout(data)
    return 0


def _add_server_args(g, what):
    """--host, --port, --no-open in group g (made with conflict_handler
    "resolve": -h is --host, as in Guild AI)."""
    g.add_argument("-h", "--host", metavar="HOST",
                   help="interface %s listens on (default 127.0.0.1)" % what)
    g.add_argument("-p", "--port", type=int, metavar="PORT",
                   help="port to listen on (default: a free one)")
    g.add_argument("-n", "--no-open", action="store_true",
                   help="do not open a browser")


def _open_browser(url, no_open):
    """Open url in a browser, unless no_open or on a Linux machine with
    no display (a cluster login node), where a console browser would
    take over the terminal."""
    if no_open or (sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))):
        return
    import webbrowser
    threading.Thread(target=webbrowser.open, args=(url,),
                     daemon=True).start()


def _build_view_parser(p):
    p.description = ("Serve a web page of runs, comparisons and scalar plots "
                     "(on 127.0.0.1 unless --host). Read-only.")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="runs to show (default: all that the filters pass)")
    _add_server_args(p.add_argument_group("server",
                                          conflict_handler="resolve"),
                     "the view")
    _add_filter_args(p)


@_command("view", "serve a web page of runs, plots and comparisons",
          _build_view_parser)
def _cmd_view(args):
    summaries, runs = _listing(args)
    only = {r.id for r in select_runs(args.runs, runs)} if args.runs else None
    host = args.host or "127.0.0.1"
    view = _View(_runs_dir(), _filter_from_args(args, summaries), only,
                 loopback=_is_loopback(host))
    server = _view_server(view, host, args.port or 0)
    try:  # from here Ctrl-C stops the view, however early
        url = "http://%s:%d/" % ("[%s]" % host if ":" in host else host,
                                 server.server_address[1])
        if not view.loopback:
            log.warning("serving on %s: anyone who can reach this machine "
                        "can read these runs and their files", host)
        print("Guild View at %s (Ctrl-C to stop)" % url, flush=True)
        _open_browser(url, args.no_open)
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _build_tensorboard_parser(p):
    p.description = ("Show runs in TensorBoard (pip install tensorboard): "
                     "the event files they wrote and the scalars they "
                     "printed, followed while TensorBoard runs.")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="runs to show (default: all that the filters pass)")
    g = p.add_argument_group("server", conflict_handler="resolve")
    _add_server_args(g, "TensorBoard")
    g.add_argument("--reload-interval", type=float, metavar="SECONDS",
                   default=TENSORBOARD_RELOAD_SECONDS,
                   help="seconds between updates of the runs' scalars "
                   "(default %d)" % TENSORBOARD_RELOAD_SECONDS)
    p.add_argument("--include-batch", action="store_true",
                   help="show batch runs too")
    _add_filter_args(p)


@_command("tensorboard", "show runs in TensorBoard",
          _build_tensorboard_parser)
def _cmd_tensorboard(args):
    import subprocess
    import tempfile
    command = _tensorboard_command()
    summaries, selected = _select_or_all(args)
    batches = {x["id"] for x in summaries if x["kind"] == "batch"}
    if not args.include_batch:
        selected = [run for run in selected if run.id not in batches]
    host = args.host or "127.0.0.1"
    port = args.port or _free_port(host)
    logdir = tempfile.mkdtemp(prefix="guild-tensorboard-")
    try:
        mirror = _TensorBoardLogdir(logdir, selected)
        mirror.sync()
        proc = subprocess.Popen(command + ["--logdir", logdir, "--host",
                                           host, "--port", str(port)])
        try:  # from here Ctrl-C stops TensorBoard, however early
            url = "http://%s:%d/" % ("[%s]" % host if ":" in host else host,
                                     port)
            print("TensorBoard at %s with %d run(s) (Ctrl-C to stop)"
                  % (url, len(selected)), flush=True)
            _open_browser(url, args.no_open)
            while proc.poll() is None:
                try:
                    proc.wait(timeout=args.reload_interval)
                except subprocess.TimeoutExpired:
                    mirror.sync()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            return 0
        if proc.returncode:
            raise ViewError("tensorboard exited with status %d"
                            % proc.returncode)
        return 0
    finally:
        shutil.rmtree(logdir, ignore_errors=True)


def _free_port(host):
    import socket
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _build_slurm_parser(p):
    p.description = (
        "Run staged runs on a Slurm cluster whose nodes share the run "
        "store (GUILD_HOME): submit them, watch them, cancel them. See "
        "'guild slurm COMMAND --help'.")


@_command("slurm", "run staged runs on a Slurm cluster", _build_slurm_parser)
def _cmd_slurm(_args):
    print("usage: %s slurm COMMAND [ARGS]...\n" % PROG)
    print("Run staged runs on a Slurm cluster that shares the run store.\n")
    print("commands:")
    for cmd in sorted(COMMANDS.values(), key=lambda c: c.word):
        if cmd.parent == "slurm":
            print("  %-7s %s" % (cmd.word, cmd.help))
    return 0


def _build_slurm_submit_parser(p):
    p.description = (
        "Put staged runs on Slurm: every staged run (default), the runs "
        "named, or those the filters select (a batch's trials with "
        "--batch). By default one job array of W worker tasks, each a "
        "queue that starts the submission's runs one after another until "
        "none is left; with --per-run, an array task per run. The job "
        "script names GUILD_HOME and the Python; --dry-run prints it.")
    _add_runs_args(p, "submit", "every staged run")
    g = p.add_argument_group("how the runs map to tasks")
    g.add_argument("-w", "--workers", type=int, metavar="W",
                   default=DEFAULT_SLURM_WORKERS,
                   help="pull workers, at most one per run (default %d)"
                   % DEFAULT_SLURM_WORKERS)
    g.add_argument("--per-run", action="store_true",
                   help="one array task per run (arrays split below "
                   "MaxArraySize)")
    g.add_argument("--max-running", type=int, metavar="K",
                   help="at most K tasks at once (the array's %%K)")
    g.add_argument("--max-array-size", type=int, metavar="N",
                   help="split arrays below N (default: the cluster's "
                   "MaxArraySize, or %d without scontrol)"
                   % DEFAULT_MAX_ARRAY_SIZE)
    g = p.add_argument_group("resources, passed to sbatch")
    for name, metavar, text in (
            ("partition", "P", "partition"), ("account", "A", "account"),
            ("qos", "Q", "quality of service"),
            ("time", "T", "time limit of a task (also sends USR1 "
             "--signal-before it)"),
            ("cpus-per-task", "C", "CPUs of a task"),
            ("gpus-per-task", "G", "GPUs of a task (CUDA_VISIBLE_DEVICES "
             "is set by Slurm)"),
            ("mem", "M", "memory of a task (sbatch --mem)"),
            ("dependency", "D", "start after jobs D (sbatch --dependency)")):
        g.add_argument("--" + name, metavar=metavar, help=text)
    g.add_argument("--sbatch-arg", action="append", default=[],
                   metavar="ARG", help="any other sbatch option, as "
                   "--sbatch-arg=--constraint=a100 (repeatable)")
    g.add_argument("--setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before the queue, such as "
                   "'module load python' (repeatable)")
    g.add_argument("--python", metavar="PATH", help="the Python that runs "
                   "guild on the nodes (default: this one, %s)"
                   % sys.executable)
    g.add_argument("--job-name", metavar="NAME",
                   help="the jobs' name (default: guild-SUBMISSION)")
    g = p.add_argument_group("preemption and time limits")
    g.add_argument("--signal-before", type=int, metavar="SECS",
                   default=DEFAULT_SIGNAL_BEFORE,
                   help="with --time: USR1 this long before the limit; the "
                   "run is staged again and the task requeued (default "
                   "%d)" % DEFAULT_SIGNAL_BEFORE)
    g.add_argument("--max-requeues", type=int, metavar="R",
                   default=DEFAULT_MAX_REQUEUES,
                   help="a run interrupted more than R times stays "
                   "terminated (default %d)" % DEFAULT_MAX_REQUEUES)
    p.add_argument("--no-store-check", action="store_true",
                   help="submit even where the store's filesystem cannot "
                   "work (see 'guild slurm check')")
    p.add_argument("--wait", action="store_true",
                   help="wait for the jobs to end; exit 1 if a run failed")
    p.add_argument("--dry-run", action="store_true",
                   help="print the job scripts; submit nothing")


@_command("slurm submit", "put staged runs on Slurm",
          _build_slurm_submit_parser)
def _cmd_slurm_submit(args):
    for name in ("workers", "max_running", "max_array_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError("--%s must be at least 1"
                             % name.replace("_", "-"))
    if args.max_array_size == 1:
        raise UsageError("--max-array-size must be at least 2")
    if args.max_requeues < 0 or args.signal_before < 1:
        raise UsageError("--max-requeues must be 0 or more and "
                         "--signal-before 1 or more")
    run_ids = _staged_to_submit(args)
    if not run_ids:
        print("Nothing to submit: no staged runs selected")
        return 0
    feeders = _feeder_batches(run_ids)
    if feeders and args.per_run:
        raise UsageError("--per-run cannot take the trials that a tpe "
                         "batch stages as results come in: use workers")
    for level, text in _store_findings(_guild_home()):
        if level == "error" and not args.no_store_check:
            raise SlurmError(text + " (--no-store-check to submit anyway)")
        if level != "ok":
            _warn(text)
    opts = {name.replace("-", "_"): getattr(args, name.replace("-", "_"))
            for name in SBATCH_PASS_THROUGH}
    opts.update(
        workers=args.workers, per_run=args.per_run,
        max_running=args.max_running, max_array_size=args.max_array_size,
        sbatch_args=args.sbatch_arg, setup=args.setup,
        python=args.python or sys.executable,
        guild_py=os.path.abspath(__file__), job_name=args.job_name,
        signal_before=args.signal_before, max_requeues=args.max_requeues)
    if not args.dry_run and not _confirm(
            "You are about to submit %d staged run%s to Slurm (%s)\n"
            "Continue?" % (len(run_ids), "" if len(run_ids) == 1 else "s",
                           "a task per run" if args.per_run else
                           "%d workers" % min(args.workers, len(run_ids))),
            yes=args.yes):
        raise GuildError("aborted")
    sub, record = _slurm_submit(run_ids, opts, args.dry_run, feeders)
    if args.dry_run:
        return 0
    jobs = [a["job"] for a in record["arrays"]]
    print("Submitted %d run%s as Slurm job%s %s (submission %s)" % (
        len(run_ids), "" if len(run_ids) == 1 else "s",
        "" if len(jobs) == 1 else "s", ", ".join(jobs), sub))
    print("To watch them, use 'guild slurm status %s'" % sub)
    return _wait_for_submission(sub) if args.wait else 0


def _feeder_batches(run_ids):
    """The tpe batches that stage the trials among run_ids as results
    come in (see _feeds_queues); SlurmError if such a batch is itself
    among them: no worker would start it."""
    feeders = set()
    for run_id in run_ids:
        attrs = _read_dict(os.path.join(_runs_dir(), run_id, ".guild",
                                        RUN_ATTRS))
        if _feeds_queues(attrs):
            raise SlurmError(
                "run %s is a tpe batch that stages its trials as results "
                "come in: start it where it can keep running ('guild run "
                "--start %s -b'), then submit: its workers take its trials "
                "as it stages them" % (run_id[:SHORT_ID_LEN],
                                       run_id[:SHORT_ID_LEN]))
        batch = attrs.get("batch")
        if isinstance(batch, str) and batch not in feeders and \
                _feeds_queues(_read_dict(os.path.join(
                    _runs_dir(), batch, ".guild", RUN_ATTRS))):
            feeders.add(batch)
    return feeders


def _staged_to_submit(args):
    """The staged runs args select, oldest first, a batch standing for
    its trials."""
    if not args.runs and not any(getattr(args, name) for name in (
            "filter_op", "filter_label", "unlabeled", "filter_started",
            "batch")) and not any(getattr(args, "status_" + name)
                                  for name in STATUS_FILTERS):
        return _staged_run_ids()  # all: no listing needed
    summaries, selected = _select_or_all(args)
    chosen = {run.id for run in selected}
    batches = {x["id"] for x in summaries
               if x["id"] in chosen and x.get("kind") == "batch"}
    if batches:  # a trial may be outside the filtered listing
        summaries = run_summaries()
        chosen |= {x["id"] for x in summaries if x.get("batch") in batches}
    return [x["id"] for x in sorted(summaries, key=lambda x: (
        x.get("created") or 0, x["id"]))
        if x["id"] in chosen and x["status"] == "staged"]


def _wait_for_submission(sub):
    """Poll squeue until the submission's tasks have ended; show its
    status. Exit 1 if a run failed or stayed unfinished."""
    record = _read_json(_slurm_dir(sub, SUBMIT_RECORD))
    jobs = [a.get("job") for a in record.get("arrays") or ()]
    delay = 0.2
    while _submission_active(record, _slurm_tasks(jobs)):
        _sleep(delay)
        delay = min(delay * 1.5, 5)
    statuses = _run_statuses(_submission_runs(sub))
    for line in _submission_status(sub, record, {}, statuses.values()):
        print(line)
    bad = sorted(set(statuses.values()) - {"completed"})
    if bad:
        raise SlurmError("not every run completed (%s)" % ", ".join(bad))
    return 0


def _build_slurm_status_parser(p):
    p.description = (
        "Show submissions: their tasks as squeue shows them (one squeue "
        "call, no sacct) and their runs' states in the store. Without "
        "SUBMISSION, those with tasks left, else the newest.")
    p.add_argument("submission", nargs="?", metavar="SUBMISSION",
                   help="a submission id (or prefix), a job id or JOB_TASK")


@_command("slurm status", "show submissions' tasks and runs",
          _build_slurm_status_parser)
def _cmd_slurm_status(args):
    if args.submission:
        shown = [_submission(args.submission)]
    else:
        shown = [(sub, _read_json(_slurm_dir(sub, SUBMIT_RECORD)))
                 for sub in _submission_ids()]
        if not shown:
            print("No Slurm submissions in %s" % _guild_home())
            return 0
    tasks = _slurm_tasks([a.get("job") for _, record in shown
                          for a in record.get("arrays") or ()])
    if not args.submission:
        active = [x for x in shown if _submission_active(x[1], tasks)]
        shown = active or shown[-1:]
    summaries = run_summaries()
    statuses = {x["id"]: x["status"] for x in summaries}
    for sub, record in shown:
        runs = _submission_runs(sub)
        # The trials a feeding batch staged after the submission count.
        feeders, submitted = set(record.get("feeders") or ()), set(runs)
        runs += [x["id"] for x in sorted(summaries, key=lambda x: (
            x["created"] or 0, x["id"])) if x["batch"] in feeders and
            x["id"] not in submitted]
        for line in _submission_status(sub, record, tasks, [
                statuses.get(run_id, "deleted") for run_id in runs]):
            print(line)
    return 0


def _build_slurm_logs_parser(p):
    p.description = (
        "Print what Slurm tasks printed (the queue's log; each run's own "
        "output is 'guild cat --output RUN'). Without TASK, every task of "
        "the newest submission.")
    p.add_argument("task", nargs="?", metavar="TASK",
                   help="a submission id, a job id, or JOB_TASK")


@_command("slurm logs", "print Slurm tasks' output", _build_slurm_logs_parser)
def _cmd_slurm_logs(args):
    sub, _record = _submission(args.task)
    names = sorted((n for n in os.listdir(_slurm_dir(sub))
                    if n.endswith(".out")), key=lambda n: [
        int(x) if x.isdigit() else x for x in re.split(r"[_.]", n)])
    if args.task and "_" in args.task:
        names = [n for n in names if n == args.task + ".out"]
    if not names:
        raise SlurmError("no task output yet for %s" % (args.task or sub))
    for name in names:
        if len(names) > 1:
            print("==> %s <==" % name)
            sys.stdout.flush()
        with open(_slurm_dir(sub, name), "rb") as f:
            _write_stdout(f.read())
    return 0


def _build_slurm_cancel_parser(p):
    p.description = (
        "Cancel submissions' jobs with scancel: their running runs end "
        "terminated and are not staged again; runs not started stay "
        "staged. Without SUBMISSION, every submission with tasks left.")
    p.add_argument("submissions", nargs="*", metavar="SUBMISSION",
                   help="submission ids (or prefixes) or job ids")
    p.add_argument("-y", "--yes", action="store_true",
                   help="do not ask for confirmation")


@_command("slurm cancel", "cancel submissions' jobs",
          _build_slurm_cancel_parser)
def _cmd_slurm_cancel(args):
    if args.submissions:
        chosen = [_submission(spec) for spec in args.submissions]
    else:
        chosen = [(sub, _read_json(_slurm_dir(sub, SUBMIT_RECORD)))
                  for sub in _submission_ids()]
    jobs = [str(a["job"]) for _, record in chosen
            for a in record.get("arrays") or () if a.get("job")]
    if not args.submissions:
        tasks = _slurm_tasks(jobs)
        jobs = [job for job in jobs if any(
            t[1] in ACTIVE_SLURM_STATES for t in tasks.get(job, ()))]
    if not jobs:
        print("Nothing to cancel")
        return 0
    if not _confirm("You are about to cancel Slurm job%s %s\nContinue?" % (
            "" if len(jobs) == 1 else "s", ", ".join(jobs)), yes=args.yes):
        raise GuildError("aborted")
    _slurm(["scancel"] + jobs)
    print("Cancelled Slurm job%s %s" % ("" if len(jobs) == 1 else "s",
                                       ", ".join(jobs)))
    return 0


def _build_slurm_check_parser(p):
    p.description = (
        "Check what Slurm jobs need: Slurm's commands, a cluster that "
        "answers, and a run store whose filesystem the nodes share, with "
        "hard links (claims). Exit 1 if something cannot work.")


@_command("slurm check", "check Slurm and the store for submissions",
          _build_slurm_check_parser)
def _cmd_slurm_check(_args):
    findings = []
    sbatch = shutil.which("sbatch")
    if sbatch:
        findings.append(("ok", "sbatch: %s" % sbatch))
        code, out = _slurm(["sinfo", "-h", "-o", "%P %a %D %T"],
                           check=False)
        if code:
            findings.append(("error", "sinfo failed (exit %d): no cluster "
                             "answers" % code))
        else:
            findings += [("ok", "partition " + line)
                         for line in out.splitlines()]
            findings.append(("ok", "MaxArraySize: %d" % _max_array_size()))
    else:
        findings.append(("error", "sbatch not found: " + SLURM_INSTALL))
    findings += _store_findings(_guild_home())
    for level, text in findings:
        print("%-7s %s" % (level + ":", text))
    return 1 if any(level == "error" for level, _ in findings) else 0


def _parser(argv=()):
    """The argument parser; only the commands argv names get their
    arguments (building them all costs more than a run's own work)."""
    p = _ArgumentParser(prog=PROG, description="Track experiments: run "
                        "scripts as runs, batches of trials and queues.")
    p.add_argument("--version", action="version",
                   version="guild.py %s" % __version__)
    p.add_argument("-H", "--guild-home", metavar="PATH",
                   help="the run store (default: GUILD_HOME or ~/.guild)")
    p.add_argument("-C", dest="cwd", metavar="PATH",
                   help="run the command as if started in PATH")
    words = [w for i, w in enumerate(argv) if not w.startswith("-") and
             (i == 0 or argv[i - 1] not in ("-H", "--guild-home", "-C"))]
    _add_commands(p, "", words)
    return p


def _add_commands(p, parent, words):
    """Add parent's sub-commands to parser p; the one words[0] names gets
    its arguments (and its own sub-commands, from words[1:])."""
    children = sorted((c for c in COMMANDS.values() if c.parent == parent),
                      key=lambda c: c.word)
    if not children:
        return
    sub = p.add_subparsers(dest="%scommand" % parent.replace(" ", "_"),
                           metavar="COMMAND")
    for cmd in children:
        cp = sub.add_parser(cmd.word, help=cmd.help,
                            aliases=list(cmd.aliases))
        if words[:1] == [cmd.word] or words[:1] and words[0] in cmd.aliases:
            cmd.add_args(cp)
            cp.set_defaults(func=cmd.func)
            _add_commands(cp, cmd.name, words[1:])


_STATUS_LETTERS = {name[0]: name for name in STATUS_FILTERS}


def _status_flags(word):
    """Guild AI's combined status filters, `-Set` for `-Se -St`."""
    if re.match(r"^-S[%s]{2,}$" % "".join(_STATUS_LETTERS), word):
        return ["-S" + letter for letter in word[2:]]
    return [word]


def _take_extra_flags(args, extra):
    """Accept NAME=VAL words after options (`run op --stage x=1`), and RUN
    words after options that follow other positionals (`export DIR
    --move 1`)."""
    plain = extra and not any(word.startswith("-") for word in extra)
    if plain and getattr(args, "func", None) is _cmd_run and all(
            "=" in word or word.startswith("@") for word in extra):
        args.flags = list(args.flags) + extra
    elif plain and isinstance(getattr(args, "runs", None), list):
        args.runs = args.runs + extra
    elif extra:
        raise UsageError("unrecognized arguments: %s\nTry 'guild --help' "
                         "for help." % " ".join(extra))


def main(argv=None):
    """Run the command line with argv; return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Called as a library, main leaves the process as it found it.
    saved_home = os.environ.get("GUILD_HOME")
    saved_quiet, saved_notice = _STATE.quiet, _STATE.notice_handled
    saved_handlers = []
    _log_to_terminal(True)
    stdout_errors = _set_stdout_errors("backslashreplace")
    try:
        argv = [w for word in argv for w in _status_flags(word)]
        args, extra = _parser(argv).parse_known_args(argv)
        _take_extra_flags(args, extra)
        if args.guild_home:
            os.environ["GUILD_HOME"] = os.path.abspath(args.guild_home)
        if args.cwd:
            try:
                os.chdir(args.cwd)
            except OSError as e:
                raise UsageError("-C %s: %s" % (args.cwd, e.strerror))
        if not getattr(args, "func", None):
            _parser(argv).print_help()
            return 0
        _STATE.quiet = bool(getattr(args, "quiet", False))
        _host_lease()  # a bad GUILD_HOST_LEASE fails here, before any work
        saved_handlers = _install_stop_handlers()
        return args.func(args)
    except GuildError as e:
        sys.stderr.write("%s: %s\n" % (PROG, e))
        return e.exit_code
    except _StopRequested as e:
        return 128 + e.signum
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except OSError as e:  # the store or disk failed under us
        sys.stderr.write("%s: %s\n" % (PROG, e))
        return 1
    finally:
        _log_to_terminal(False)
        _set_stdout_errors(stdout_errors)
        for signum, handler in saved_handlers:
            signal.signal(signum, handler)
        _STATE.quiet, _STATE.notice_handled = saved_quiet, saved_notice
        if saved_home is None:
            os.environ.pop("GUILD_HOME", None)
        else:
            os.environ["GUILD_HOME"] = saved_home


# ---------------------------------------------------------------------------
## 21. Compatibility namespaces
# ---------------------------------------------------------------------------


def _namespace(name, doc, **names):
    mod = types.ModuleType("%s.%s" % (__name__, name), doc)
    mod.__dict__.update(names)
    sys.modules[mod.__name__] = mod
    return mod


batch_util = _namespace(
    "batch_util", "Batch trials (Guild AI's guild.batch_util).",
    init_trial_run=init_trial_run,
    _try_run_staged_trial=_try_run_staged_trial)
op_util = _namespace(
    "op_util", "Run state changes (Guild AI's guild.op_util).",
    set_run_pending=set_run_pending)
lock = _namespace(
    "lock", "Named inter-process locks (Guild AI's guild.lock).",
    Lock=Lock, LockTimeout=LockTimeout, RUN_STATUS=RUN_STATUS)
run = _namespace(
    "run", "Runs (Guild AI's guild.run).",
    Run=Run, mkid=mkid, run_status=run_status)


# ---------------------------------------------------------------------------
## 22. Script entry
# ---------------------------------------------------------------------------

# MIT License
#
# Permission is hereby granted, free of charge, to any person obtaining a
# copy of this software and associated documentation files (the
# "Software"), to deal in the Software without restriction, including
# without limitation the rights to use, copy, modify, merge, publish,
# distribute, sublicense, and/or sell copies of the Software, and to permit
# persons to whom the Software is furnished to do so, subject to the
# following conditions: The above copyright notice and this permission
# notice shall be included in all copies or substantial portions of the
# Software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.

if __name__ == "__main__":
    if _QUIET_LOAD:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.argv[1:2] == [SCRIPT_PROCESS_ARG]:  # a fresh script's process
        sys.exit(_script_process_main(sys.argv[2:]))
    # Register this module as `guild` so later imports share one copy.
    _register_module("guild")
    code = main()
    if hasattr(atexit, "_run_exitfuncs"):  # CPython: skip the teardown
        _end_process()
        os._exit(code)
    sys.exit(code)
