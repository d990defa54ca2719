"""Tests for guild.py: unit tests in the order of the file, then the doctest
files under samples/ (the specification among them).

    python3 test_guild.py            # everything
    python3 test_guild.py -k Flags   # a part

Tests write only in temporary directories: every run store is a temp dir.
"""

import contextlib
import doctest
import glob
import html.parser
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import unittest.mock
import urllib.error
import urllib.request

import guild

ROOT = os.path.dirname(os.path.abspath(__file__))
GUILD_PY = os.path.join(ROOT, "guild.py")
SAMPLES = os.path.join(ROOT, "samples")
IS_WINDOWS = os.name == "nt"

# ---------------------------------------------------------------------------
# Helpers, also the globals of the doctest files
# ---------------------------------------------------------------------------

_temp_dirs = []


def mkdtemp():
    """A new temporary directory, removed when the test ends."""
    d = tempfile.mkdtemp(prefix="guild-test-")
    _temp_dirs.append(d)
    return d


def _cleanup_temp_dirs():
    while _temp_dirs:
        shutil.rmtree(_temp_dirs.pop(), ignore_errors=True)


def path(*parts):
    """os.path.join."""
    return os.path.join(*parts)


def sample(*parts):
    """A path under samples/."""
    return os.path.join(SAMPLES, *parts)


def write(filename, contents):
    """Write text to filename."""
    with open(filename, "w") as f:
        f.write(contents)


def cat(filename):
    """Print a file's text."""
    with open(filename) as f:
        print(f.read().rstrip("\n"))


def tf_value(tag, value, form="simple", plugin=None):
    """A TensorBoard Summary.Value: value as `simple_value`, or as a
    tensor: `content` (TF2's tf.summary.scalar: tensor_content),
    `float_val` (tensorboard's own writer), `double_val` or `int_val`; a
    list value makes a tensor of several elements."""
    f = guild._proto_field
    values = value if isinstance(value, list) else [value]
    if form == "simple":
        body = f(2, (5, struct.pack("<f", value)))
    else:
        dtype, fmt, field = {"content": (1, "<f", 4),
                             "float_val": (1, "<f", 5),
                             "double_val": (2, "<d", 6),
                             "int_val": (3, None, 7)}[form]
        data = (b"".join(guild._encode_varint(v) for v in values)
                if fmt is None
                else b"".join(struct.pack(fmt, v) for v in values))
        body = f(8, f(1, dtype) + f(2, b"") + f(field, data))
    if plugin:
        body += f(9, f(1, f(1, plugin.encode())))
    return f(1, tag.encode()) + body


def tf_event(step, *values, wall_time=1795000000.5):
    """The bytes of one Event: a Summary of the tf_value()s given."""
    f = guild._proto_field
    return (f(1, wall_time) + (f(2, step) if step else b"")
            + f(5, b"".join(f(1, v) for v in values)))


def tf_events(*events):
    """An event file's bytes: the file version record, then events
    (tf_event() bytes, or (step, tag, value) for a simple_value)."""
    records = [guild._proto_field(1, 1795000000.0)
               + guild._proto_field(3, b"brain.Event:2")]
    for e in events:
        records.append(e if isinstance(e, bytes)
                       else tf_event(e[0], tf_value(e[1], e[2])))
    return b"".join(guild._tfrecord(r) for r in records)


def guild_cmd(args, cwd=None, guild_home=None, env=None, timeout=120,
              input=None, guild_py=GUILD_PY):
    """Run `python guild.py ARGS` (this checkout's guild.py unless given);
    return (exit code, stdout+stderr)."""
    full_env = dict(os.environ)
    full_env.pop("GUILD_HOME", None)
    if guild_home:
        full_env["GUILD_HOME"] = guild_home
    full_env.update(env or {})
    p = subprocess.run(
        [sys.executable, guild_py] + list(args), cwd=cwd, env=full_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
        input=(input or "").encode(), check=False)
    return p.returncode, p.stdout.decode("utf-8", "replace")


def cat_file(filename):
    """A text file's contents; "" if it is missing."""
    try:
        with open(filename) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def any_start_mode(test):
    """Mark a test of a starts_scripts class whose checks do not depend on
    how a script starts (the listing, compare, export, ... of runs it
    made): make test's fresh-interpreter pass leaves it out."""
    test.starts_scripts = False
    return test


def require(what, available, install):
    """Skip the calling test where `what` (a program or package it needs)
    is missing, saying how to install it; with GUILD_REQUIRE_<WHAT>=1 in
    the environment (CI sets these) fail instead of skipping."""
    if available:
        return
    reason = "%s not installed (%s)" % (what, install)
    if os.environ.get("GUILD_REQUIRE_" + what.upper()) == "1":
        raise AssertionError("GUILD_REQUIRE_%s=1 but %s"
                             % (what.upper(), reason))
    raise unittest.SkipTest(reason)


def _default_sigint():
    """In a child about to exec: take Ctrl-C as a terminal would give it.
    A suite started in the background (`make test &`, nohup) has SIGINT
    ignored, which children inherit, and tests that send it would hang."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class SetGuildHome:
    """Set GUILD_HOME for the duration of a with block."""

    def __init__(self, guild_home):
        self.guild_home = guild_home
        self._saved = None

    def __enter__(self):
        self._saved = os.environ.get("GUILD_HOME")
        os.environ["GUILD_HOME"] = self.guild_home
        return self

    def __exit__(self, *_exc):
        if self._saved is None:
            os.environ.pop("GUILD_HOME", None)
        else:
            os.environ["GUILD_HOME"] = self._saved


class LogCapture:
    """Capture guild's log records in a with block; print_all shows them.

    INFO records print as their message, others as `LEVEL: message`.
    """

    def __init__(self):
        self.records = []
        self._logger = logging.getLogger("guild")
        self._saved = None

    def __enter__(self):
        capture = self

        class _Handler(logging.Handler):
            def emit(self, record):
                capture.records.append(record)

        self._saved = (self._logger.handlers[:], self._logger.level)
        self._logger.handlers = [_Handler()]
        self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *_exc):
        self._logger.handlers, level = self._saved
        self._logger.setLevel(level)

    def print_all(self):
        for r in self.records:
            msg = r.getMessage()
            print(msg if r.levelno == logging.INFO
                  else "%s: %s" % (r.levelname, msg))


class Project:
    """A project directory and a run store, driven through the CLI."""

    def __init__(self, cwd, guild_home=None):
        self.cwd = cwd
        self.guild_home = guild_home or mkdtemp()

    def _cmd(self, args, **kw):
        return guild_cmd(args, cwd=self.cwd, guild_home=self.guild_home,
                         **kw)

    @staticmethod
    def _run_args(op, flags, opts):
        args = ["run", "-y"]
        if op:
            args.append(op)
        args += opts.pop("extra", [])
        for name, val in sorted((flags or {}).items()):
            text = val if isinstance(val, str) else guild.encode_flag_val(val)
            args.append("%s=%s" % (name, text))
        for name, val in sorted(opts.items()):
            opt = "--" + name.replace("_", "-")
            if val is True:
                args.append(opt)
            elif val not in (None, False):
                args += [opt, str(val)]
        return args

    def run(self, op=None, flags=None, **opts):
        """Run `guild run -y ...`; print its output (and a bad exit).

        String flag values are passed as typed (`"[1:10]"`); other values
        are encoded (`["a", "b"]` is `[a, b]`, True is `yes`).
        """
        code, out = self._cmd(self._run_args(op, flags, opts))
        out = out.rstrip("\n")
        if out:
            print(out)
        if code != 0:
            print("<exit %i>" % code)

    def run_capture(self, op=None, flags=None, **opts):
        """Run with --run-dir in the store; return (run, output)."""
        run_dir = path(self.guild_home, "runs", guild.mkid())
        opts["run_dir"] = run_dir
        code, out = self._cmd(self._run_args(op, flags, opts))
        if code != 0:
            out += "<exit %i>" % code
        return guild.Run(os.path.basename(run_dir), run_dir), \
            out.rstrip("\n")

    def guild(self, *args):
        """Run `guild ARGS...`; print its output (and a bad exit)."""
        code, out = self._cmd(args)
        out = out.rstrip("\n")
        if out:
            print(out)
        if code != 0:
            print("<exit %i>" % code)

    def guild_output(self, *args):
        """The output of `guild ARGS...` as a string."""
        return self._cmd(args)[1]

    def list_runs(self):
        """The store's runs, newest first."""
        return guild.list_runs(path(self.guild_home, "runs"))

    def print_runs(self, runs=None, flags=False, labels=False,
                   status=False):
        """Print runs as a table: op, [label], [flags], [status]."""
        rows = []
        for run in runs if runs is not None else self.list_runs():
            row = [run.op_desc]
            if labels:
                row.append(run.get("label") or "")
            if flags:
                row.append(guild.format_flags(run.flags))
            if status:
                row.append(run.status)
            rows.append(row)
        for line in guild._format_table(rows):
            print(line)

    def delete_runs(self):
        """Delete every run."""
        self.guild("runs", "delete", "-y")


DOCTEST_GLOBS = {
    "os": os,
    "Project": Project, "mkdtemp": mkdtemp, "path": path, "write": write,
    "sample": sample, "cat": cat, "SetGuildHome": SetGuildHome,
    "LogCapture": LogCapture, "guild_cmd": guild_cmd,
    "tf_events": tf_events,
}


class GuildTestCase(unittest.TestCase):
    """A test with its own run store and project dir."""

    def setUp(self):
        self.home = mkdtemp()
        self.project = mkdtemp()
        self.addCleanup(_cleanup_temp_dirs)
        self._env = SetGuildHome(self.home)
        self._env.__enter__()
        self.addCleanup(self._env.__exit__)

    def chdir(self, d):
        """Work in directory d until the test ends."""
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(d)

    def copy_sample(self, *names, project="basic"):
        for name in names:
            shutil.copy(sample("projects", project, name), self.project)

    def guild(self, *args, **kw):
        return guild_cmd(args, cwd=self.project, guild_home=self.home, **kw)

    def runs(self):
        return guild.list_runs(path(self.home, "runs"))

    def wait_for(self, predicate, timeout=60, what="it"):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                self.fail("timed out waiting for %s" % what)
            time.sleep(0.05)

    def start_guild(self, *args, until=b"sleeping", new_group=False):
        """Start `guild ARGS` in the background (with new_group, as a
        shell starts a command: in a process group of its own); return it
        once a line of its output contains until."""
        p = subprocess.Popen(
            [sys.executable, GUILD_PY] + list(args), cwd=self.project,
            env=dict(os.environ, GUILD_HOME=self.home),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            preexec_fn=None if IS_WINDOWS else _default_sigint,
            start_new_session=new_group)
        self.addCleanup(p.stdout.close)
        while until not in p.stdout.readline():
            if p.poll() is not None:
                self.fail("guild %s ended before printing %r"
                          % (" ".join(args), until))
        return p

    def assertGuildError(self, result, message):
        code, out = result
        self.assertNotEqual(code, 0, out)
        self.assertIn("guild: ", out)
        self.assertIn(message, out)
        self.assertNotIn("Traceback", out)


# ---------------------------------------------------------------------------
# 4. Small utilities
# ---------------------------------------------------------------------------


class UtilTest(GuildTestCase):
    def test_mkid_is_32_hex_and_unique(self):
        ids = {guild.mkid() for _ in range(100)}
        self.assertEqual(len(ids), 100)
        for i in ids:
            self.assertRegex(i, r"^[0-9a-f]{32}$")

    def test_timestamps_strictly_increase(self):
        stamps = [guild._timestamp() for _ in range(1000)]
        self.assertEqual(stamps, sorted(set(stamps)))

    def test_write_json_is_atomic_and_leaves_no_temp_files(self):
        p = path(self.project, "x.json")
        guild._write_json(p, {"a": 1})
        guild._write_json(p, {"a": 2})
        self.assertEqual(guild._read_json(p), {"a": 2})
        self.assertEqual(os.listdir(self.project), ["x.json"])

    def test_read_json_of_a_broken_file_is_the_default(self):
        p = path(self.project, "x.json")
        write(p, "{not json")
        self.assertEqual(guild._read_json(p, "d"), "d")

    def test_own_process_is_alive(self):
        self.assertTrue(guild._owner_alive(guild._process_owner()))

    def test_reused_pid_is_not_the_same_process(self):
        owner = guild._process_owner()
        owner["start"] = "not-the-start-time"
        self.assertFalse(guild._owner_alive(owner))

    def test_process_on_another_host_counts_as_alive(self):
        owner = {"pid": 1, "start": "x", "host": guild.HOST + "-other"}
        self.assertTrue(guild._owner_alive(owner))
        self.assertFalse(guild._owner_alive(dict(owner, host=guild.HOST)))

    def test_dead_process_is_not_alive(self):
        p = subprocess.Popen([sys.executable, "-c",
                              "import time; time.sleep(30)"])
        owner = guild._process_owner(p.pid)
        self.assertTrue(guild._owner_alive(owner))
        p.kill()
        p.wait()
        self.assertFalse(guild._owner_alive(owner))
        self.assertIsNone(guild._process_owner(p.pid))
        self.assertFalse(guild._owner_alive(None))
        self.assertFalse(guild._owner_alive({"pid": "x"}))


# ---------------------------------------------------------------------------
# 5. Locks
# ---------------------------------------------------------------------------


class LockTest(GuildTestCase):
    def test_lock_file_is_under_guild_home(self):
        with guild.Lock(guild.RUN_STATUS, timeout=5):
            self.assertTrue(os.path.exists(
                path(self.home, "locks", guild.RUN_STATUS)))

    def test_lock_resolves_guild_home_when_acquired(self):
        lock = guild.Lock("late", timeout=5)
        other = mkdtemp()
        with SetGuildHome(other):
            with lock:
                pass
        self.assertTrue(os.path.exists(path(other, "locks", "late")))

    def test_lock_excludes_another_process(self):
        code = ("import sys, guild\n"
                "try:\n"
                "    with guild.Lock('x', timeout=0.2):\n"
                "        print('acquired')\n"
                "except guild.LockTimeout as e:\n"
                "    print('guild: %s' % e)\n")
        env = dict(os.environ, PYTHONPATH=ROOT)
        with guild.Lock("x", timeout=5):
            out = subprocess.run([sys.executable, "-c", code], env=env,
                                 stdout=subprocess.PIPE,
                                 check=True).stdout.decode()
        self.assertIn("timed out after 0.2s waiting for lock 'x'", out)
        out = subprocess.run([sys.executable, "-c", code], env=env,
                             stdout=subprocess.PIPE,
                             check=True).stdout.decode()
        self.assertEqual(out.strip(), "acquired")

    def test_lock_is_reentrant_in_one_thread(self):
        with guild.Lock("r", timeout=1):
            with guild.Lock("r", timeout=1):
                pass
        with guild.Lock("r", timeout=1):
            pass

    def test_release_without_acquire_is_an_error(self):
        with self.assertRaises(RuntimeError):
            guild.Lock("r").release()


# ---------------------------------------------------------------------------
# 6. Flags
# ---------------------------------------------------------------------------


class FlagDecodeTest(unittest.TestCase):
    def test_decode(self):
        cases = [
            ("yes", True), ("no", False), ("True", True), ("false", False),
            ("on", True), ("off", False), ("null", None), ("1", 1),
            ("-2", -2), ("1.5", 1.5), ("1e-3", 0.001), (".5", 0.5),
            ("1.", 1.0), ("abc", "abc"), ("'yes'", "yes"), ('"1"', "1"),
            ("", ""), ("[a,b,c]", ["a", "b", "c"]), ("[1, 2.5, no]",
                                                     [1, 2.5, False]),
            ("['a,b', c]", ["a,b", "c"]), ("[]", []), ("1.2.3", "1.2.3"),
            ("nan", "nan"), ("hi there", "hi there"),
        ]
        for text, val in cases:
            with self.subTest(text=text):
                decoded = guild.decode_flag_val(text)
                self.assertEqual(decoded, val)
                self.assertEqual(type(decoded), type(val))

    def test_encode(self):
        cases = [
            (True, "yes"), (False, "no"), (None, "null"), (1, "1"),
            (0.1, "0.1"), (1e-05, "1e-05"), ("a", "a"), ("hi 1", "'hi 1'"),
            ("1", "'1'"), ("yes", "'yes'"), ("", "''"),
            (["a", 1], "[a, 1]"),
        ]
        for val, text in cases:
            with self.subTest(val=val):
                self.assertEqual(guild.encode_flag_val(val), text)

    def test_encode_decode_round_trip(self):
        for val in [True, False, None, 0, -3, 2.5, "a", "a b", "1", "no",
                    ["x", 2, "y z"], "it's"]:
            with self.subTest(val=val):
                self.assertEqual(
                    guild.decode_flag_val(guild.encode_flag_val(val)), val)

    def test_format_flags(self):
        self.assertEqual(guild.format_flags({"msg": "a", "loud": False}),
                         "loud=no msg=a")
        self.assertEqual(guild.format_flags({"msg": "hi 1"}), "msg='hi 1'")

    def test_coerce_by_type(self):
        c = guild._coerce_flag_val
        self.assertEqual(c("s", "true", {"type": "string"}), "true")
        self.assertEqual(c("s", "1", {"type": "string"}), "1")
        # Numbers keep the type typed, as in Guild AI: 4 for a float
        # flag is the int 4; 1.5 for an int flag is 1.5, unless the
        # script declares the flag an int (argparse's type=int).
        self.assertEqual(c("f", "1", {"type": "float"}), 1)
        self.assertIsInstance(c("f", "1", {"type": "float"}), int)
        self.assertEqual(c("f", "0.5", {"type": "float"}), 0.5)
        self.assertEqual(c("i", "3", {"type": "int"}), 3)
        self.assertEqual(c("i", "1.5", {"type": "int"}), 1.5)
        self.assertEqual(c("b", "yes", {"type": "boolean"}), True)
        self.assertEqual(c("b", "0", {"type": "boolean"}), False)
        self.assertEqual(c("x", "[1,2.5]", {"type": "float"}), [1, 2.5])
        self.assertEqual(c("x", "[a,b]", {"type": "string"}), ["a", "b"])
        self.assertEqual(c("u", "1", None), 1)
        for name, raw, fd in [("i", "1.5", {"type": "int",
                                            "declared": True}),
                              ("f", "x", {"type": "float"}),
                              ("f", "yes", {"type": "float"}),
                              ("i", "x", {"type": "int"}),
                              ("b", "maybe", {"type": "boolean"}),
                              ("b", "2", {"type": "boolean"}),
                              ("c", "z", {"choices": ["a", "b"]})]:
            with self.assertRaises(guild.FlagError):
                c(name, raw, fd)

    def test_parse_flag_args(self):
        self.assertEqual(guild._parse_flag_args(["a=1", "b=x=y", "c="]),
                         {"a": "1", "b": "x=y", "c": ""})
        for bad in ["a", "=1", "1a=2"]:
            with self.assertRaises(guild.FlagError):
                guild._parse_flag_args([bad])


class FlagInferenceTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def test_argparse_flags(self):
        self.copy_sample("typed.py")
        mode, defs = guild._script_flagdefs(path(self.project, "typed.py"))
        self.assertEqual(mode, "args")
        self.assertEqual(sorted(defs), ["epochs", "lr", "name",
                                        "no-shuffle", "opt"])
        self.assertEqual(defs["lr"]["type"], "float")
        self.assertEqual(defs["lr"]["help"], "learning rate")
        self.assertEqual(defs["epochs"]["type"], "int")
        self.assertEqual(defs["name"]["type"], "string")
        self.assertEqual(defs["opt"]["choices"], ["sgd", "adam"])
        self.assertEqual(defs["no-shuffle"]["kind"], "store_false")
        self.assertEqual(defs["no-shuffle"]["default"], True)

    def test_argparse_flags_are_cached_by_content(self):
        self.copy_sample("typed.py")
        script = path(self.project, "typed.py")
        guild._script_flagdefs(script)
        cache = path(self.home, "cache", "flags")
        self.assertEqual(len(os.listdir(cache)), 1)
        [entry] = os.listdir(cache)
        guild._script_flagdefs(script)
        self.assertEqual(len(os.listdir(cache)), 1)
        # A hit is checked against the source itself, not just the key.
        stale = guild._read_json(path(cache, entry))
        stale.update(source="other", flags={"bogus": {}})
        guild._write_json(path(cache, entry), stale)
        _mode, defs = guild._script_flagdefs(script)
        self.assertNotIn("bogus", defs)
        self.assertIn("lr", defs)
        with open(script, "a") as f:
            f.write("# changed\n")
        guild._script_flagdefs(script)
        self.assertEqual(len(os.listdir(cache)), 2)

    def test_probe_does_not_run_the_scripts_work(self):
        write(path(self.project, "s.py"),
              "import argparse\np = argparse.ArgumentParser()\n"
              "p.add_argument('--x', default=1)\np.parse_args()\n"
              "open('worked', 'w').close()\n")
        mode, defs = guild._script_flagdefs(path(self.project, "s.py"))
        self.assertEqual((mode, defs["x"]["type"]), ("args", "int"))
        self.assertFalse(os.path.exists(path(self.project, "worked")))

    def test_globals_flags(self):
        self.copy_sample("train.py")
        mode, defs = guild._script_flagdefs(path(self.project, "train.py"))
        self.assertEqual(mode, "globals")
        self.assertEqual({n: (d["type"], d["default"])
                          for n, d in defs.items()},
                         {"lr": ("float", 0.1), "epochs": ("int", 2),
                          "name": ("string", "base"),
                          "fast": ("boolean", False), "seed": (None, None)})

    def test_globals_skip_private_and_non_literals(self):
        write(path(self.project, "g.py"),
              "import os\n_hidden = 1\nx = os.getcwd()\ny: int = 3\n"
              "def f():\n    z = 1\n")
        _mode, defs = guild._script_flagdefs(path(self.project, "g.py"))
        self.assertEqual(sorted(defs), ["y"])

    def test_syntax_error_is_a_guild_error(self):
        write(path(self.project, "bad.py"), "x = (\n")
        with self.assertRaises(guild.OpError):
            guild._script_flagdefs(path(self.project, "bad.py"))

    def test_argparse_import_without_parser_falls_back_to_globals(self):
        write(path(self.project, "a.py"), "import argparse\nx = 1\n")
        mode, defs = guild._script_flagdefs(path(self.project, "a.py"))
        self.assertEqual((mode, sorted(defs)), ("globals", ["x"]))


ARGPARSE_STYLES = """\
import argparse


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--learning-rate", dest="rate", type=float, default=0.1)
    p.add_argument("--aug", action=argparse.BooleanOptionalAction,
                   default=True)
    p.add_argument("--layers", nargs="+", type=int, default=[64, 32])
    p.add_argument("--pair", nargs=2, default=["a", "b"])
    p.add_argument("--mixed", type=bool, default=True)
    p.add_argument("--opt", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--req", required=True)
    p.add_argument("-b", type=int, default=3, help="batch")
    p.add_argument("--verbose", action="count")
    print(sorted(vars(p.parse_args()).items()))


if __name__ == "__main__":
    main()
"""

CLICK_STYLES = """\
import sys
try:
    import click
except ImportError:  # the test skips where click is missing
    sys.exit("click is not installed")


@click.command()
@click.option("--lr", type=float, default=0.1, help="learning rate")
@click.option("--epochs", type=int, default=2)
@click.option("--aug/--no-aug", default=True)
@click.option("--quiet", is_flag=True)
@click.option("--opt", type=click.Choice(["sgd", "adam"]), default="sgd")
@click.option("--req", required=True)
@click.option("--pair", nargs=2, type=int, default=(1, 2))
@click.option("--shuffle", type=bool, default=True)
@click.option("-n", "count", type=int, default=1)
def main(**kw):
    print(sorted(kw.items()))


if __name__ == "__main__":
    main()
"""


class FlagStylesTest(GuildTestCase):
    """Every way scripts take flags, through the CLI."""
    starts_scripts = True  # also run in the fresh-interpreter pass

    def run_ok(self, *args):
        code, out = self.guild("run", *(args + ("-y",)))
        self.assertEqual(code, 0, out)
        return out

    def test_forced_flags_reach_a_script_reading_sys_argv(self):
        write(path(self.project, "argv.py"),
              "import sys\nprint(sys.argv[1:])\n")
        out = self.run_ok("argv.py", "lr=0.5", "fast=yes", "off=no",
                          "msg=a b", "--force-flags")
        self.assertEqual(out, "['--fast', '1', '--lr', '0.5', '--msg', "
                              "'a b', '--off', '']\n")
        code, out = self.guild("runs", "info")
        self.assertIn("argv.py --fast 1 --lr 0.5 --msg 'a b' --off ''\n",
                      out)

    def test_forced_flags_reach_a_parser_in_an_imported_module(self):
        write(path(self.project, "config.py"),
              "import argparse\n\ndef get_args():\n"
              "    p = argparse.ArgumentParser()\n"
              "    p.add_argument('--lr', type=float, default=0.1)\n"
              "    p.add_argument('--fast', action='store_true')\n"
              "    return p.parse_args()\n")
        write(path(self.project, "train.py"),
              "from config import get_args\nx = 1\n"
              "print(sorted(vars(get_args()).items()), x)\n")
        out = self.run_ok("train.py", "x=2", "lr=0.5", "--force-flags")
        self.assertEqual(out, "[('fast', False), ('lr', 0.5)] 2\n")

    def test_argparse_styles_are_flags(self):
        write(path(self.project, "styles.py"), ARGPARSE_STYLES)
        code, out = self.guild("run", "styles.py", "--help-op")
        flags = out.split("Flags:\n")[1]
        for line in ["  aug            (default is yes)",
                     "  b              batch (default is 3)",
                     "  layers         (default is '64 32')",
                     "  learning-rate  (default is 0.1)",
                     "  mixed          (default is yes)",
                     "  pair           (default is 'a b')",
                     "  req            (required)"]:
            self.assertIn(line + "\n", flags)
        self.assertNotIn("verbose", flags)
        out = self.run_ok("styles.py", "req=x", "aug=no", "layers=8 4 2",
                          "mixed=no", "b=5", "learning-rate=0.3",
                          "pair=c d")
        self.assertEqual(out, "[('aug', False), ('b', 5), ('layers', "
                              "[8, 4, 2]), ('mixed', False), ('opt', "
                              "'sgd'), ('pair', ['c', 'd']), ('rate', "
                              "0.3), ('req', 'x'), ('verbose', None)]\n")
        out = self.run_ok("styles.py", "req=y", "aug=yes", "mixed=yes",
                          "layers=7")
        self.assertIn("('aug', True)", out)
        self.assertIn("('layers', [7])", out)
        self.assertIn("('mixed', True)", out)
        code, out = self.guild("runs", "info")
        self.assertIn("styles.py --aug -b 3 --layers 7 --learning-rate=0.1 "
                      "--mixed=1 --opt=sgd --pair a b --req=y\n", out)

    def test_a_list_is_a_grid_axis_and_words_are_one_value(self):
        write(path(self.project, "styles.py"), ARGPARSE_STYLES)
        code, out = self.guild("run", "styles.py", "req=x",
                               "layers=[8 4, 2]", "--print-trials")
        self.assertEqual(code, 0, out)
        self.assertIn("1  yes  3  '8 4'", out)
        self.assertIn("2  yes  3  2 ", out)

    def test_argparse_refusals_come_before_a_run(self):
        write(path(self.project, "styles.py"), ARGPARSE_STYLES)
        self.assertGuildError(
            self.guild("run", "styles.py", "-y"),
            "missing required flag 'req' (the script's option --req)")
        self.assertGuildError(
            self.guild("run", "styles.py", "req=x", "opt=rmsprop", "-y"),
            "invalid value rmsprop for opt: choose from sgd, adam")
        self.assertGuildError(
            self.guild("run", "styles.py", "req=x", "b=1.5", "-y"),
            "invalid value 1.5 for b: expected an integer")
        self.assertGuildError(
            self.guild("run", "styles.py", "req=x", "layers=1 x", "-y"),
            "invalid value x for layers: expected a number")
        self.assertGuildError(
            self.guild("run", "styles.py", "req=x", "aug=maybe", "-y"),
            "invalid value maybe for aug: expected yes or no")
        self.assertEqual(self.runs(), [])
        self.assertFalse(os.path.exists(path(self.home, "runs")) and
                         os.listdir(path(self.home, "runs")))

    def test_subparsers_top_level_options(self):
        write(path(self.project, "sub.py"),
              "import argparse\np = argparse.ArgumentParser()\n"
              "p.add_argument('--lr', type=float, default=0.1)\n"
              "subs = p.add_subparsers(dest='cmd')\n"
              "subs.add_parser('train').add_argument('--epochs')\n"
              "print(sorted(vars(p.parse_args()).items()))\n")
        code, out = self.guild("run", "sub.py", "--help-op")
        self.assertIn("  lr  (default is 0.1)\n", out)
        self.assertNotIn("epochs", out)
        self.assertEqual(self.run_ok("sub.py", "lr=0.5"),
                         "[('cmd', None), ('lr', 0.5)]\n")

    def test_click_scripts(self):
        try:
            import click
        except ImportError:
            click = None
        require("click", click, "pip install click")
        write(path(self.project, "cl.py"), CLICK_STYLES)
        code, out = self.guild("run", "cl.py", "--help-op")
        flags = out.split("Flags:\n")[1]
        for line in ["  aug      (default is yes)",
                     "  epochs   (default is 2)",
                     "  lr       learning rate (default is 0.1)",
                     "  n        (default is 1)",
                     "  pair     (default is '1 2')",
                     "  quiet    (default is no)",
                     "  req      (required)",
                     "  shuffle  (default is yes)"]:
            self.assertIn(line + "\n", flags)
        self.assertIn("Choices: sgd, adam", flags)
        out = self.run_ok("cl.py", "req=x", "lr=1", "aug=no", "quiet=yes",
                          "pair=3 4", "shuffle=no", "n=-2", "opt=adam")
        self.assertEqual(out, "[('aug', False), ('count', -2), ('epochs', "
                              "2), ('lr', 1.0), ('opt', 'adam'), ('pair', "
                              "(3, 4)), ('quiet', True), ('req', 'x'), "
                              "('shuffle', False)]\n")
        self.assertGuildError(self.guild("run", "cl.py", "-y"),
                              "missing required flag 'req'")
        self.assertGuildError(
            self.guild("run", "cl.py", "req=x", "epochs=1.5", "-y"),
            "invalid value 1.5 for epochs: expected an integer")
        self.assertGuildError(
            self.guild("run", "cl.py", "req=x", "opt=x", "-y"),
            "invalid value x for opt: choose from sgd, adam")
        self.assertEqual(len(self.runs()), 1)

    def test_numbers_keep_the_type_typed(self):
        write(path(self.project, "g.py"),
              "x = 0.1\nepochs = 2\nprint(repr(x), repr(epochs))\n")
        self.assertEqual(self.run_ok("g.py", "x=4", "epochs=0.5"),
                         "4 0.5\n")
        self.assertEqual(self.runs()[0].get("label"), "epochs=0.5 x=4")
        self.assertGuildError(self.guild("run", "g.py", "x=abc", "-y"),
                              "invalid value abc for x: expected a number")

    def test_a_global_assigned_twice_defaults_to_the_first(self):
        write(path(self.project, "g.py"),
              "x = 1\nx = 2\nprint(x)\n")
        code, out = self.guild("run", "g.py", "--help-op")
        self.assertIn("  x  (default is 1)\n", out)
        self.assertEqual(self.run_ok("g.py", "x=5"), "5\n")
        self.assertEqual(self.runs()[0].flags, {"x": 5})


# ---------------------------------------------------------------------------
# 7. TensorBoard event files
# ---------------------------------------------------------------------------


class EventFileTest(GuildTestCase):
    def write_events(self, data, name="events.out.tfevents.1.host"):
        target = path(self.project, name)
        with open(target, "wb") as f:
            f.write(data)
        return target

    def read(self, target, offset=0):
        records, offset, damaged = guild._read_event_file(target, offset)
        return [r[:3] for r in records], offset, damaged

    def test_crc32c_and_its_mask(self):
        self.assertEqual(guild._crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(guild._crc32c(b""), 0)
        # TFRecords as tensorboardX frames them.
        self.assertEqual(guild._tfrecord(b"").hex(),
                         "0000000000000000" "29039807" "d8ea82a2")
        self.assertEqual(guild._tfrecord(b"hello").hex(),
                         "0500000000000000" "eab2043e" "68656c6c6f"
                         "bb1f1c19")

    def test_varints(self):
        for n in [0, 1, 127, 128, 300, 123456789012, (1 << 63) - 1, -1,
                  -5]:
            data = guild._encode_varint(n)
            val, end = guild._decode_varint(data + b"x", 0)
            self.assertEqual(end, len(data))
            self.assertEqual(val - (1 << 64) if val >= 1 << 63 else val, n)
        self.assertEqual(guild._encode_varint(300), b"\xac\x02")
        self.assertEqual(len(guild._encode_varint(-1)), 10)

    def test_the_scalar_encodings_writers_use(self):
        target = self.write_events(tf_events(
            (0, "loss", 0.5),
            tf_event(1, tf_value("acc", 0.25, "content", "scalars")),
            tf_event(2, tf_value("acc", 0.5, "float_val", "scalars")),
            tf_event(3, tf_value("d", 0.125, "double_val")),
            tf_event(-4, tf_value("neg", 1.0)),
            tf_event(123456789012, tf_value("big", 2.0),
                     tf_value("loss", 1 / 3))))
        self.assertEqual(self.read(target)[0], [
            ("loss", 0.5, 0), ("acc", 0.25, 1), ("acc", 0.5, 2),
            ("d", 0.125, 3), ("neg", 1.0, -4), ("big", 2.0, 123456789012),
            ("loss", 0.3333333432674408, 123456789012)])
        records = guild._read_event_file(target)[0]
        self.assertEqual(records[0][3], 1795000000500000)  # microseconds

    def test_what_is_not_a_scalar(self):
        target = self.write_events(tf_events(
            tf_event(1, tf_value("ints", 7, "int_val")),
            tf_event(1, tf_value("hist", [1.0, 2.0], "content")),
            tf_event(1, tf_value("hp", 1.0, "content", "hparams")),
            guild._proto_field(1, 1.0) + guild._proto_field(6, b"x"),
            b"\x0f\xff not a protobuf",
            (2, "kept", 1.0)))
        self.assertEqual(self.read(target)[0], [("kept", 1.0, 2)])

    def test_truncated_tail_is_read_when_complete(self):
        data = tf_events((1, "loss", 1.0), (2, "loss", 0.5))
        last = guild._tfrecord(tf_event(3, tf_value("loss", 0.25)))
        target = self.write_events(data + last[:7])
        self.assertEqual(self.read(target), ([("loss", 1.0, 1),
                                              ("loss", 0.5, 2)],
                                             len(data), None))
        with open(target, "ab") as f:
            f.write(last[7:-2])
        self.assertEqual(self.read(target, len(data)),
                         ([], len(data), None))
        with open(target, "ab") as f:
            f.write(last[-2:])
        self.assertEqual(self.read(target, len(data)),
                         ([("loss", 0.25, 3)], len(data + last), None))

    def test_a_damaged_length_stops_the_file_there(self):
        data = bytearray(tf_events((1, "a", 1.0), (2, "a", 2.0),
                                   (3, "a", 3.0)))
        third = len(tf_events((1, "a", 1.0), (2, "a", 2.0)))
        data[third + 2] ^= 0x40
        target = self.write_events(bytes(data))
        self.assertEqual(self.read(target), ([("a", 1.0, 1), ("a", 2.0, 2)],
                                             third, third))

    def test_large_records_span_read_chunks(self):
        big = tf_event(1, tf_value("long/" + "x" * 200, 1.0),
                       tf_value("hist", [0.5] * 100000, "content"))
        target = self.write_events(tf_events(big, (2, "after", 2.0)))
        self.assertGreater(os.path.getsize(target), 2 * 65536)
        saved = guild.EVENT_READ_CHUNK
        guild.EVENT_READ_CHUNK = 65536
        self.addCleanup(setattr, guild, "EVENT_READ_CHUNK", saved)
        self.assertEqual(self.read(target)[0], [
            ("long/" + "x" * 200, 1.0, 1), ("after", 2.0, 2)])



def tensorboard_python():
    """A Python that can import tensorboard: this one, or the one the
    `tensorboard` program on PATH runs with; None if neither."""
    import importlib.util
    if importlib.util.find_spec("tensorboard") is not None:
        return sys.executable
    program = shutil.which("tensorboard")
    if program:
        with open(program, "rb") as f:
            first = f.readline().decode("utf-8", "replace")
        if first.startswith("#!") and os.path.exists(first[2:].strip()):
            return first[2:].strip()
    return None


class EventWriterTest(GuildTestCase):
    records = [("loss", 0.5, 0, 1795000000000000),
               ("acc", 0.25, 1, 1795000000500000),
               ("loss", -3.0, 123456789012, 1795000001000000),
               ("big", float("inf"), 2, 1795000002000000)]

    def write_events(self):
        target = path(self.project, "events.out.tfevents.1.guild")
        with open(target, "wb") as f:
            f.write(guild._event_file_header(1795000000.0))
            f.write(guild._event_records(self.records[:3]))
            f.write(guild._event_records([("big", 1e300, 2,
                                           1795000002000000)]))
        return target

    def test_guild_reads_back_what_it_writes(self):
        records, offset, damaged = guild._read_event_file(self.write_events())
        self.assertEqual((records, damaged), (self.records, None))

    def test_tensorboard_reads_what_guild_writes(self):
        python = tensorboard_python()
        require("tensorboard", python, "pip install tensorboard")
        self.write_events()
        out = subprocess.run([python, "-c", (
            "import json, sys\n"
            "from tensorboard.backend.event_processing import "
            "event_accumulator as ea\n"
            "acc = ea.EventAccumulator(sys.argv[1])\n"
            "acc.Reload()\n"
            "print(json.dumps({tag: [[e.step, e.value, e.wall_time] for e "
            "in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}))"),
            self.project], stdout=subprocess.PIPE, check=True)
        self.assertEqual(json.loads(out.stdout.decode().splitlines()[-1]), {
            "loss": [[0, 0.5, 1795000000.0],
                     [123456789012, -3.0, 1795000001.0]],
            "acc": [[1, 0.25, 1795000000.5]],
            "big": [[2, float("inf"), 1795000002.0]]})

# ---------------------------------------------------------------------------
# 8. Runs and their status
# ---------------------------------------------------------------------------


class StatusTest(GuildTestCase):
    def make_run(self, staged=True):
        return guild._init_run(path(self.home, "runs", guild.mkid()),
                               {"op": {"kind": "script", "name": "x.py"},
                                "flags": {}}, staged=staged)

    def test_staged_then_pending_then_running_then_completed(self):
        run = self.make_run()
        self.assertEqual(run.status, "staged")
        guild.set_run_pending(run)
        self.assertEqual(run.status, "pending")
        guild._write_json(run.guild_path("proc.json"),
                          guild._process_owner())
        self.assertEqual(run.status, "running")
        guild._write_json(run.guild_path("exit.json"),
                          {"exit_status": 0, "status": "completed"})
        self.assertEqual(run.status, "completed")

    def test_claim_by_a_dead_process_is_void(self):
        run = self.make_run()
        guild._write_json(run.guild_path("PENDING"),
                          {"pid": os.getpid(), "start": "gone"})
        self.assertEqual(run.status, "staged")
        unstaged = self.make_run(staged=False)
        guild._write_json(unstaged.guild_path("PENDING"),
                          {"pid": os.getpid(), "start": "gone"})
        self.assertEqual(unstaged.status, "error")

    def test_process_that_died_without_exit_is_error(self):
        run = self.make_run()
        guild._write_json(run.guild_path("proc.json"),
                          {"pid": os.getpid(), "start": "reused"})
        self.assertEqual(run.status, "error")

    def test_exit_status_names(self):
        self.assertEqual(guild._exit_status_name(0, False), "completed")
        self.assertEqual(guild._exit_status_name(2, False), "error")
        self.assertEqual(guild._exit_status_name(-signal.SIGTERM, False),
                         "terminated")
        self.assertEqual(guild._exit_status_name(0, True), "terminated")
        if not IS_WINDOWS:
            self.assertEqual(guild._exit_status_name(-signal.SIGKILL,
                                                     False), "error")

    def test_half_created_run_dir_is_not_a_run(self):
        os.makedirs(path(self.home, "runs", guild.mkid(), ".guild"))
        self.make_run()
        self.assertEqual(len(self.runs()), 1)


# ---------------------------------------------------------------------------
# 9. Listing and selecting runs
# ---------------------------------------------------------------------------


class SelectTest(GuildTestCase):
    def setUp(self):
        super().setUp()
        self.ids = ["aaaa1111" + "0" * 24, "aaaa2222" + "0" * 24,
                    "bbbb3333" + "0" * 24]
        for run_id in self.ids:
            guild._init_run(path(self.home, "runs", run_id),
                            {"op": {"kind": "script", "name": "x.py"}},
                            staged=True)

    def test_newest_first(self):
        self.assertEqual([r.id for r in self.runs()],
                         list(reversed(self.ids)))

    def test_select_by_index_id_and_prefix(self):
        runs = self.runs()
        sel = guild.select_runs(["1", "aaaa1", self.ids[1]], runs)
        self.assertEqual([r.id for r in sel],
                         [self.ids[2], self.ids[0], self.ids[1]])

    def test_ambiguous_and_unknown(self):
        with self.assertRaisesRegex(guild.RunError, "matches 2 runs"):
            guild.select_runs(["aaaa"], self.runs())
        with self.assertRaisesRegex(guild.RunError, "could not find"):
            guild.select_runs(["zzz"], self.runs())
        with self.assertRaisesRegex(guild.RunError, "could not find"):
            guild.select_runs(["9"], self.runs())

    def test_index_ranges(self):
        runs = self.runs()
        ids = lambda specs: [r.id for r in guild.select_runs(specs, runs)]
        self.assertEqual(ids(["1:2"]), [runs[0].id, runs[1].id])
        self.assertEqual(ids([":2"]), ids(["1:2"]))
        self.assertEqual(ids(["2:"]), [runs[1].id, runs[2].id])
        self.assertEqual(ids([":"]), [r.id for r in runs])
        self.assertEqual(ids(["3", "2:"]), [runs[2].id, runs[1].id])
        self.assertEqual(ids(["4:"]), [])
        self.assertEqual(guild._select_one("2:2", runs), runs[1])
        with self.assertRaisesRegex(guild.RunError, "'1:3' matches 3 runs"):
            guild._select_one("1:3", runs)
        with self.assertRaisesRegex(guild.RunError, "indexes start at 1"):
            guild.select_runs(["0:2"], runs)

    def test_cli_errors(self):
        self.assertGuildError(self.guild("runs", "info", "aaaa"),
                              "'aaaa' matches 2 runs")
        self.assertGuildError(self.guild("runs", "delete", "zz", "-y"),
                              "could not find a run matching 'zz'")
        self.assertEqual(len(self.runs()), 3)


class FilterTest(unittest.TestCase):
    NOW = time.mktime((2026, 11, 21, 15, 30, 0, 0, 0, -1))

    def at(self, *ymdhm):
        return int(time.mktime(tuple(ymdhm) + (0, 0, 0, -1)) * 1e6)

    def test_time_ranges(self):
        r = lambda spec: guild.parse_time_range(spec, self.NOW)
        day = self.at(2026, 11, 21, 0, 0)
        self.assertEqual(r("today"), (day, None))
        self.assertEqual(r("yesterday"), (self.at(2026, 11, 20, 0, 0), day))
        self.assertEqual(r("last 2 hours"), (self.at(2026, 11, 21, 13, 30),
                                             None))
        self.assertEqual(r("Last 1 day"), (self.at(2026, 11, 20, 15, 30),
                                           None))
        self.assertEqual(r("after 2026-11-01"), (self.at(2026, 11, 1, 0, 0),
                                                 None))
        self.assertEqual(r("before 2026-11-01 12:00"),
                         (None, self.at(2026, 11, 1, 12, 0)))
        self.assertEqual(r("between 9:00 and 12:30"),
                         (self.at(2026, 11, 21, 9, 0),
                          self.at(2026, 11, 21, 12, 30)))
        self.assertEqual(r("2026-11-02"), (self.at(2026, 11, 2, 0, 0),
                                           self.at(2026, 11, 3, 0, 0)))
        for bad in ["soon", "last hours", "after never", "between 1"]:
            with self.assertRaises(guild.UsageError):
                r(bad)

    def test_filter_matches(self):
        x = {"op": "train.py+", "label": "lr=0.1", "flags": {"lr": 0.1},
             "status": "completed", "batch": None, "started": 5,
             "created": 1}
        F = guild.RunFilter
        self.assertTrue(F(operation="train").matches(x))
        self.assertFalse(F(operation="eval").matches(x))
        self.assertTrue(F(label="0.1").matches(x))
        self.assertTrue(F(unlabeled=True).matches(x))
        self.assertFalse(F(unlabeled=True).matches(dict(x, label="best")))
        self.assertTrue(F(statuses=["error", "completed"]).matches(x))
        self.assertFalse(F(statuses=["staged"]).matches(x))
        self.assertFalse(F(batch="b").matches(x))
        self.assertTrue(F(batch="b").matches(dict(x, batch="b")))


class ListTest(GuildTestCase):
    def test_list_shows_first_20_with_footer(self):
        for _ in range(23):
            guild._init_run(path(self.home, "runs", guild.mkid()),
                            {"op": {"kind": "script", "name": "x.py"},
                             "label": "a=1"}, staged=True)
        code, out = self.guild("runs")
        lines = out.splitlines()
        self.assertEqual(code, 0)
        self.assertEqual(len(lines), 21)
        self.assertRegex(lines[0], r"^\[1:[0-9a-f]{8}\] +x\.py  "
                         r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  staged  a=1$")
        self.assertIn("Showing the first 20 runs (23 total)", lines[-1])
        self.assertEqual(len(self.guild("runs", "-a")[1].splitlines()), 23)
        self.assertEqual(len(self.guild("runs", "list", "-n", "5")[1]
                             .splitlines()), 6)

    def test_empty_store_lists_nothing(self):
        self.assertEqual(self.guild("runs"), (0, ""))

    def test_guild_home_that_is_a_file(self):
        bad = path(self.project, "file")
        write(bad, "")
        self.copy_sample("train.py")
        result = guild_cmd(["run", "train.py", "-y"], cwd=self.project,
                           guild_home=bad)
        self.assertGuildError(result, "")
        self.assertIn("Not a directory", result[1])


def guild_main(*args):
    """guild.main(args) in this process: (exit code, output), with stdout
    and stderr one strict UTF-8 stream, as a terminal's. Argparse may end
    it (--help, a usage error)."""
    buf = io.BytesIO()
    out = io.TextIOWrapper(buf, encoding="utf-8", errors="strict",
                           write_through=True)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = guild.main(list(args))
        except SystemExit as e:
            code = e.code
    return code, buf.getvalue().decode("utf-8", "replace")



OK_SCRIPT = "x = 1\nprint('loss: 0.5')\n"
DIR = object()  # damage: a directory in place of the file


class DamageTest(GuildTestCase):
    """One damaged run never breaks the store: every metadata file
    damaged in every way, the others listed, the damaged one deletable."""

    CASES = [(name, content) for name in (
        "run.json", "proc.json", "exit.json", "PENDING", "scalars",
        "output") for content in (
        b"", b"\0" * 64, b'{"op": {"ki', b"5", b"[1, 2]", b'"x"', b"null",
        b"\xff\xfe", DIR)] + [
        ("run.json", {"op": 5}), ("run.json", {"op": {"kind": 5}}),
        ("run.json", {"flags": [1]}), ("run.json", {"label": 5}),
        ("run.json", {"created": "x"}), ("run.json", {"batch": 5}),
        ("run.json", {"flags": {"s": "a\ud800b"}}),
        ("run.json", {"label": "a\ud800b"}),
        ("exit.json", {"status": 5, "exit_status": "x", "stopped": []}),
        ("proc.json", {"pid": "x", "started": "y", "command": 5}),
        ("scalars", b'null\n5\n["a", "b", 1, 2]\n["loss", 0.5, 0, 1]\n')]

    def make_store(self):
        write(path(self.project, "ok.py"), OK_SCRIPT)
        op = guild._resolve_op("ok.py", self.project)
        runs = []
        for i in range(3):
            run = guild._init_run(
                path(self.home, "runs", "%s%d" % ("a" * 31, i)),
                {"op": op, "flags": {"x": i}, "label": "x=%d" % i},
                staged=(i == 1), source_root=self.project,
                source_files=["ok.py"])
            runs.append(run)
        for run in (runs[0], runs[2]):
            guild._write_json(run.guild_path("proc.json"), {
                "pid": os.getpid(), "start": "long gone", "host": guild.HOST,
                "started": guild._timestamp()})
            guild._write_json(run.guild_path("exit.json"), {
                "exit_status": 0, "stopped": guild._timestamp(),
                "status": "completed"})
            guild._remove(run.guild_path("PENDING"))
            write(run.guild_path("output"), "loss: 0.5\n")
            write(run.guild_path("scalars"), '["loss", 0.5, 0, 1]\n')
        return runs

    def damage(self, run, name, content):
        target = run.guild_path(name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        if content is DIR:
            guild._remove(target)
            os.makedirs(path(target, "sub"))
        elif isinstance(content, dict):
            data = guild._read_json(target) or {}
            data.update(content)
            with open(target, "w") as f:
                json.dump(data, f)
        else:
            with open(target, "wb") as f:
                f.write(content)

    def test_each_damaged_file_leaves_the_store_working(self):
        runs = self.make_store()
        template = mkdtemp()
        shutil.rmtree(template)
        shutil.copytree(self.home, template)
        for (name, content), victim in [
                (case, v) for case in self.CASES for v in (0, 1)
                if v == 0 or case[0] in ("run.json", "PENDING")]:
            with self.subTest(file=name, content=content, victim=victim):
                shutil.rmtree(self.home)
                shutil.copytree(template, self.home)
                run = runs[victim]
                self.damage(run, name, content)
                code, out = guild_main("runs")
                self.assertEqual(code, 0, out)
                self.assertEqual(len(out.splitlines()), 3, out)
                code, out = guild_main("runs", "info", run.id)
                self.assertEqual(code, 0, out)
                if content is DIR or content == {"op": 5} or (
                        name != "output" and content in (b"\0" * 64, b"5")):
                    self.assertIn("damaged: %s " % name, out)
                self.assertEqual(guild_main("compare", "--csv", "-")[0], 0)
                if name == "run.json":
                    self.assertIn(guild_main("label", ":", "-s", "z",
                                             "-y")[0], (0, 1))
                code, out = guild_main("runs", "delete", "-p", run.id, "-y")
                self.assertEqual(code, 0, out)
                self.assertEqual(len(guild_main("runs")[1].splitlines()),
                                 2)
                self.assertEqual(runs[2].status, "completed")

    def test_lone_surrogate_in_a_listed_run_is_shown_escaped(self):
        runs = self.make_store()
        self.damage(runs[0], "run.json", {"label": "a\ud800b",
                                          "flags": {"s": "a\ud800b"}})
        self.assertIn("a\\ud800b", guild_main("runs")[1])
        self.assertIn("s: a\\ud800b", guild_main("runs", "info",
                                                 runs[0].id)[1])

    def test_unreadable_run_json_shows_op_and_reason(self):
        runs = self.make_store()
        self.damage(runs[0], "run.json", b"\0" * 64)
        self.assertRegex(guild_main("runs")[1],
                         r"\[\d:aaaaaaaa\]  \?  .* completed")
        out = guild_main("runs", "info", runs[0].id)[1]
        self.assertIn("operation: ?", out)
        self.assertIn("damaged: run.json holds NUL bytes", out)
        self.damage(runs[1], "run.json", b'{"op": {"ki')
        out = guild_main("runs", "info", runs[1].id)[1]
        self.assertIn("status: error", out)
        self.assertIn("reason: its run.json is not valid JSON", out)
        for args in (["compare"], ["ls", runs[1].id],
                     ["runs", "delete", runs[1].id, "-y"],
                     ["runs", "purge", "-y"]):
            self.assertEqual(guild_main(*args)[0], 0, args)
        self.assertEqual(len(guild_main("runs")[1].splitlines()), 2)

    def test_queue_skips_a_damaged_staged_run(self):
        runs = self.make_store()
        self.damage(runs[1], "PENDING", DIR)
        good = guild._init_run(
            path(self.home, "runs", guild.mkid()),
            {"op": runs[1].get("op"), "flags": {"x": 5}}, staged=True,
            source_root=self.project, source_files=["ok.py"])
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertEqual(code, 0, out)
        self.assertNotIn("Traceback", out)
        self.assertEqual((runs[1].status, good.status),
                         ("error", "completed"))

    def test_unborn_run_dirs_are_never_listed_and_removed_once_dead(self):
        self.make_store()
        dead = subprocess.run([sys.executable, "-c", "import os; "
                               "print(os.getpid())"], stdout=subprocess.PIPE,
                              check=True)
        dead_pid = int(dead.stdout)
        unborn = {}
        for name, pid in (("dead", dead_pid), ("alive", os.getpid())):
            d = path(self.home, "runs", name)
            os.makedirs(path(d, ".guild"))
            guild._write_json(path(d, ".guild", "PENDING"), {
                "pid": pid, "start": guild._proc_token(pid),
                "host": guild.HOST})
            unborn[name] = d
        lost = path(self.home, "runs", "lost")  # ran, then lost run.json
        os.makedirs(path(lost, ".guild"))
        write(path(lost, ".guild", "output"), "hi\n")
        out = guild_main("runs")[1]
        self.assertEqual(len(out.splitlines()), 4, out)
        self.assertRegex(out, r"\[4:lost\] +\? +error")
        self.assertFalse(os.path.exists(unborn["dead"]))
        self.assertTrue(os.path.exists(unborn["alive"]))
        self.assertIn("damaged: run.json is missing",
                      guild_main("runs", "info", "lost")[1])


class CacheDamageTest(GuildTestCase):
    """Caches are caches: replaced by files or directories, they are
    rebuilt or moved aside; locks/ damage is a clear error."""

    CASES = [(rel, "file") for rel in (
        "cache", "cache/index", "cache/index/staged", "cache/index/claims",
        "cache/index/running", "cache/index/version", "cache/runs.json",
        "cache/flags")] + [(rel, "dir") for rel in (
            "cache/index/staged/junk", "cache/index/staged/" + "0" * 20 +
            "-" + "a" * 32, "cache/runs.json", "cache/index/version",
            "cache/index/running/" + "b" * 32)] + [
        ("cache/flags/*.json", '{"mode": "globals", "flags": 5}'),
        ("cache/flags/*.json", '{"mode": "args", "flags": {"x": 5}}'),
        ("cache/runs.json", '{"version": 3, "rows": [[1, 2], "x"]}')]

    def damage(self, rel, kind):
        for target in glob.glob(path(self.home, rel)) or [
                path(self.home, rel)]:
            if os.path.isdir(target):
                shutil.rmtree(target)
            else:
                guild._remove(target)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if kind == "dir":
                os.makedirs(path(target, "sub"))
            else:
                write(target, "junk" if kind == "file" else kind)

    def test_damaged_caches_are_rebuilt_or_moved_aside(self):
        write(path(self.project, "ok.py"), OK_SCRIPT)
        self.chdir(self.project)
        self.assertEqual(guild_main("run", "ok.py", "--stage", "-y")[0], 0)
        self.assertEqual(self.guild("run", "queue", "run-once=yes",
                                    "-y")[0], 0)
        template = mkdtemp()
        shutil.rmtree(template)
        shutil.copytree(self.home, template)
        for rel, kind in self.CASES:
            with self.subTest(path=rel, kind=kind):
                shutil.rmtree(self.home)
                shutil.copytree(template, self.home)
                self.damage(rel, kind)
                code, out = guild_main("run", "ok.py", "x=2", "--stage",
                                       "-y")
                self.assertEqual(code, 0, out)
                code, out = self.guild("run", "queue", "run-once=yes", "-y")
                self.assertEqual(code, 0, out)
                self.assertNotIn("Traceback", out)
                code, out = guild_main("runs", "-Ss")
                self.assertEqual(code, 0, out)
                self.assertNotIn("[1:", out)  # nothing left staged
                self.assertEqual(len(guild_main("runs", "-Sc")[1]
                                     .splitlines()), 4)  # 2 ok.py, 2 queues
                if kind == "dir" or (kind == "file" and not rel.endswith(
                        ("version", "runs.json"))):  # those are rewritten
                    self.assertTrue(os.listdir(path(self.home,
                                                    "cache.damaged")))

    def test_damaged_locks_are_a_clear_error(self):
        write(path(self.project, "ok.py"), OK_SCRIPT)
        self.guild("run", "ok.py", "--stage", "-y")
        for rel, kind, message in (
                ("locks", "file", "is a file; move it away"),
                ("locks/run-status", "dir", "the lock file '%s' is a "
                 "directory: remove it" % path(self.home, "locks",
                                               "run-status"))):
            self.damage(rel, kind)
            self.assertGuildError(self.guild("run", "queue", "run-once=yes",
                                             "-y"), message)
            shutil.rmtree(path(self.home, "locks"), ignore_errors=True)
            guild._remove(path(self.home, "locks"))
        self.assertEqual(self.guild("run", "queue", "run-once=yes",
                                    "-y")[0], 0)


# ---------------------------------------------------------------------------
# 10. Operations through the CLI
# ---------------------------------------------------------------------------


class SourceSnapshotTest(GuildTestCase):
    """What a run's source snapshot copies, and says it leaves out."""

    def write_files(self, files):
        for rel, contents in files.items():
            os.makedirs(path(self.project, os.path.dirname(rel)),
                        exist_ok=True)
            mode = "wb" if isinstance(contents, bytes) else "w"
            with open(path(self.project, rel), mode) as f:
                f.write(contents)

    def staged_snapshot(self, *args, env=None):
        """Stage the script train.py; return (output, run attrs)."""
        code, out = self.guild("run", "train.py", "--stage", "-y", *args,
                               env=env)
        self.assertEqual(code, 0, out)
        return out, self.runs()[0]._attrs()

    def test_a_300_file_project_keeps_the_script_and_its_modules(self):
        self.write_files({
            "zz_train.py": "import zz_helper; import os\n"
                           "from zz_pkg import zz_mod\n"
                           "from zz_pkg.zz_sub import zz_deep\n"
                           "print('ok', zz_helper.V, zz_mod.W, zz_deep.D)\n",
            "zz_helper.py": "import zz_chain as c\nV = c.C\n",
            "zz_chain.py": "C = 1\n",
            "zz_pkg/__init__.py": "",
            "zz_pkg/zz_mod.py": "from .zz_rel import (\n    R,\n)\nW = R\n",
            "zz_pkg/zz_rel.py": "R = 2\n",
            "zz_pkg/zz_sub/zz_deep.py": "D = 3\n",  # a namespace package
            "zz_unused.py": "",
        })
        self.write_files({"a_%03d.txt" % i: "%d\n" % i for i in range(300)})
        code, out = self.guild("run", "zz_train.py", "-y")
        self.assertEqual(code, 0, out)
        warning, ran = out.splitlines()
        self.assertEqual(ran, "ok 1 2 3")
        self.assertEqual(
            warning, "guild: warning: the source snapshot leaves out 208 "
            "files (208 past the 100-file limit): a_093.txt a_094.txt "
            "a_095.txt ... ('guild runs info' names them; guild.ini "
            "[sourcecode] sets what is copied)")
        run = self.runs()[0]
        self.assertEqual(len(run.get("sourcecode")), 100)
        self.assertEqual(run.get("sourcecode")[:7], [
            "zz_train.py", "zz_helper.py", "zz_pkg/__init__.py",
            "zz_pkg/zz_mod.py", "zz_pkg/zz_sub/zz_deep.py", "zz_chain.py",
            "zz_pkg/zz_rel.py"])
        self.assertIn("\nsourcecode_left_out: 208 files (208 past the "
                      "100-file limit): a_093.txt a_094.txt ",
                      self.guild("runs", "info")[1])
        left_out = json.loads(self.guild("runs", "info", "--json")[1])[
            "sourcecode_left_out"]
        self.assertEqual(left_out["count"], 208)
        self.assertEqual(left_out["files"][-1],
                         {"path": "zz_unused.py", "reason": "count"})

    def test_data_left_out_with_a_warning_until_the_project_says(self):
        self.write_files({
            "train.py": "import os\nprint(os.path.getsize('data/x.npy'), "
                        "os.path.getsize('ckpt.bin'))\n",
            "data/x.npy": b"\x93NUMPY\0\1",
            "ckpt.bin": "a" * (1024 * 1024 + 1)})
        code, out = self.guild("run", "train.py", "-y")
        self.assertEqual(code, 1)
        self.assertIn("guild: warning: the source snapshot leaves out 2 "
                      "files (1 over 1 MiB, 1 not text): ckpt.bin "
                      "data/x.npy ('guild runs info'", out)
        self.assertIn("No such file or directory: 'data/x.npy'", out)
        self.assertIn("\nsourcecode_left_out: 2 files (1 over 1 MiB, 1 not "
                      "text): ckpt.bin data/x.npy\n",
                      self.guild("runs", "info")[1])
        write(path(self.project, "guild.ini"),
              "[sourcecode]\ninclude = data/\nmax-size = 2M\n")
        code, out = self.guild("run", "train.py", "-y")
        self.assertEqual((code, out), (0, "8 1048577\n"))
        self.assertNotIn("sourcecode_left_out", self.guild("runs", "info")[1])

    def test_patterns_choose_what_is_copied_but_never_the_script(self):
        self.write_files({
            "train.py": "import lib.util\n", "lib/util.py": "",
            "notes.txt": "", "logs/a.log": "", "data/x.npy": b"\0",
            "data/y.npy": b"\0", "data/sub/z.npy": b"\0",
            "skip/.guild-nocopy": "", "skip/a.py": "",
            "guild.ini": "[sourcecode]\nexclude = *.py logs/\n"
                         "  /data/sub\ninclude = *.npy\n"})
        out, attrs = self.staged_snapshot()
        self.assertEqual(sorted(attrs["sourcecode"]), [
            "data/x.npy", "data/y.npy", "guild.ini", "lib/util.py",
            "notes.txt", "train.py"])
        self.assertNotIn("warning", out)
        self.assertEqual(self.guild("run", "train.py", "--test-sourcecode"),
                         (0, "Source snapshot of train.py from %s (at most "
                          "100 files of at most 1 MiB each; guild.ini "
                          "[sourcecode] changes what is copied):\n"
                          "  train.py\n  lib/util.py\n  data/x.npy\n"
                          "  data/y.npy\n  guild.ini\n  notes.txt\n"
                          % os.path.realpath(self.project)))
        write(path(self.project, "guild.ini"),
              "[sourcecode]\nmax-count = 2\nexclude = data/\n")
        out, attrs = self.staged_snapshot()
        self.assertEqual(attrs["sourcecode"], ["train.py", "lib/util.py"])
        self.assertIn("leaves out 3 files (3 past the 2-file limit): "
                      "guild.ini notes.txt logs/a.log (", out)
        self.assertTrue(self.guild(  # Guild AI's variable: one command
            "run", "train.py", "--test-sourcecode",
            env={"MAX_DEFAULT_SOURCECODE_COUNT": "4"})[1].endswith(
                "  lib/util.py\n  guild.ini\n  notes.txt\nLeft out: 1 "
                "file (1 past the 4-file limit)\n  logs/a.log (past the "
                "4-file limit)\n"))

    def test_a_bad_settings_file_is_an_error_before_any_run(self):
        write(path(self.project, "train.py"), "")
        for ini, message in [
                ("[sourcecode]\nmax-size = big\n", "guild.ini: max-size "
                 "must be a whole number (a size may end in K, M or G), "
                 "not 'big'"),
                ("[sourcecode]\nincludes = *.npy\n", "guild.ini: unknown "
                 "setting 'includes' in [sourcecode] (settings: include, "
                 "exclude, max-count, max-size)"),
                ("include = *.npy\n", "guild.ini: File contains no section "
                 "headers.")]:
            write(path(self.project, "guild.ini"), ini)
            self.assertGuildError(self.guild("run", "train.py", "-y"),
                                  message)
        os.remove(path(self.project, "guild.ini"))
        self.assertGuildError(self.guild(
            "run", "train.py", "-y", env={"MAX_DEFAULT_SOURCECODE_COUNT":
                                          "x"}), "MAX_DEFAULT_SOURCECODE_"
            "COUNT must be a whole number")
        self.assertEqual(self.runs(), [])

    def test_a_script_missing_from_its_run_is_an_error(self):
        write(path(self.project, "train.py"), "")
        out, attrs = self.staged_snapshot()
        run = self.runs()[0]
        os.remove(path(run.dir, "train.py"))
        self.assertGuildError(self.guild("run", "--start", run.id, "-y"),
                              "cannot start %s: the script train.py is "
                              "missing from its directory %s" % (run.id,
                                                                 run.dir))
        self.assertEqual(run.status, "staged")

    def test_imports_found_without_running_the_script(self):
        found = list(guild._imports(
            "import a.b as c, d\nx = 1; import e  # f\n"
            "from .g import (h,\n    i as j)\nfrom ..k import *\n"
            "    from l import m\nm = importlib.import_module('n.o')\n"
            "s = 'not import p'\n"))
        self.assertEqual(found, [
            ("a.b", 0, []), ("d", 0, []), ("e", 0, []), ("g", 1, ["h", "i"]),
            ("k", 2, []), ("l", 0, ["m"]), ("n.o", 0, [])])


class RunTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def test_run_records_everything(self):
        self.copy_sample("say.py", project="batch")
        code, out = self.guild("run", "say.py", "msg=hi there", "-y")
        self.assertEqual((code, out), (0, "hi there\n"))
        [run] = self.runs()
        self.assertEqual(run.status, "completed")
        self.assertEqual(run.flags, {"msg": "hi there", "loud": False})
        self.assertEqual(run.get("label"), "loud=no msg='hi there'")
        self.assertEqual(run.get("exit_status"), 0)
        self.assertLessEqual(run.get("started"), run.get("stopped"))
        self.assertEqual(run.opref.to_opspec(), "say.py")
        with open(run.guild_path("output")) as f:
            self.assertEqual(f.read(), "hi there\n")
        self.assertTrue(os.path.exists(path(run.dir, "say.py")))
        code, out = self.guild("cat", "--output")
        self.assertEqual(out, "hi there\n")

    def test_run_exits_with_script_exit_code(self):
        self.copy_sample("fail.py")
        code, out = self.guild("run", "fail.py", "code=5", "-y")
        self.assertEqual(code, 5)
        self.assertEqual(out, "failing with 5\n")
        self.assertEqual(self.runs()[0].status, "error")
        self.assertEqual(self.runs()[0].get("exit_status"), 5)

    def test_globals_are_replaced(self):
        self.copy_sample("train.py")
        code, out = self.guild("run", "train.py", "lr=1", "name=true",
                               "fast=yes", "seed=7", "-y")
        self.assertEqual(out, "lr=1 epochs=2 name=true fast=True seed=7\n")
        self.assertEqual(self.runs()[0].flags, {
            "lr": 1, "epochs": 2, "name": "true", "fast": True,
            "seed": 7})

    def test_argparse_types(self):
        self.copy_sample("typed.py")
        code, out = self.guild("run", "typed.py", "lr=1", "name=7",
                               "no-shuffle=no", "opt=adam", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("('lr', 1.0)", out)
        self.assertIn("('name', '7')", out)
        self.assertIn("('opt', 'adam')", out)
        self.assertIn("('shuffle', False)", out)

        self.assertGuildError(self.guild("run", "typed.py", "opt=x", "-y"),
                              "invalid value x for opt: choose from sgd, "
                              "adam")
        self.assertGuildError(
            self.guild("run", "typed.py", "epochs=1.5", "-y"),
            "invalid value 1.5 for epochs: expected an integer")
        self.assertEqual(len(self.runs()), 1)
        code, out = self.guild("run", "typed.py", "name=-x", "-y")
        self.assertIn("('name', '-x')", out)

    def test_run_env_and_cwd(self):
        self.copy_sample("env.py")
        code, out = self.guild("run", "env.py", "--gpus", "1", "-y")
        run = self.runs()[0]
        self.assertIn("RUN_DIR=%s\n" % run.dir, out)
        self.assertIn("RUN_ID=%s\n" % run.id, out)
        self.assertIn("CUDA_VISIBLE_DEVICES=1\n", out)
        self.assertIn("cwd=%s\n" % os.path.realpath(run.dir),
                      out.replace(run.dir, os.path.realpath(run.dir)))

    def test_unknown_flag_and_force_flags(self):
        self.copy_sample("train.py")
        self.assertGuildError(self.guild("run", "train.py", "foo=1", "-y"),
                              "unsupported flag 'foo'")
        self.assertEqual(self.runs(), [])
        code, out = self.guild("run", "train.py", "foo=1", "--force-flags",
                               "-y")
        self.assertEqual(code, 0, out)
        self.assertEqual(self.runs()[0].flags["foo"], 1)

    def test_help_op(self):
        self.copy_sample("typed.py")
        code, out = self.guild("run", "typed.py", "--help-op")
        self.assertEqual(code, 0)
        self.assertIn("Usage: guild run [OPTIONS] typed.py [FLAG]...", out)
        self.assertIn("lr          learning rate (default is 0.1)", out)
        self.assertIn("Choices: sgd, adam", out)
        self.assertEqual(self.runs(), [])

    def test_bad_input_errors_leave_no_run(self):
        self.copy_sample("train.py")
        cases = [
            (["nosuch"], "argument COMMAND: invalid choice: 'nosuch'"),
            (["run", "missing.py", "-y"], "cannot find script 'missing.py'"),
            (["run", "train.py", "lr", "-y"],
             "invalid argument 'lr': expected NAME=VALUE"),
            (["run", "train.py", "lr=abc", "-y"],
             "invalid value abc for lr: expected a number"),
            (["run", "train.py", "--nosuch"], "unrecognized arguments"),
            (["run", "-y"], "missing operation"),
            (["run", "--start", "nosuch", "-y"],
             "could not find a run matching 'nosuch'"),
            (["cat", "--output"], "could not find a run matching '1'"),
        ]
        for args, message in cases:
            with self.subTest(args=args):
                self.assertGuildError(self.guild(*args), message)
        runs_dir = path(self.home, "runs")
        self.assertEqual(os.listdir(runs_dir) if os.path.exists(runs_dir)
                         else [], [])

    @any_start_mode
    def test_confirmation(self):
        self.copy_sample("train.py")
        code, out = self.guild("run", "train.py", "lr=0.5", input="n\n")
        self.assertIn("You are about to run train.py\n", out)
        self.assertIn("  lr: 0.5\n", out)
        self.assertGuildError((code, out), "aborted")
        self.assertEqual(self.runs(), [])
        code, out = self.guild("run", "train.py", input="\n")
        self.assertEqual(code, 0, out)
        self.assertEqual(len(self.runs()), 1)

    def test_label_stage_start_restart(self):
        self.copy_sample("train.py")
        code, out = self.guild("run", "train.py", "lr=0.2", "--stage",
                               "--label", "first", "-y")
        run = self.runs()[0]
        self.assertEqual(out, "train.py staged as %s\nTo start the "
                         "operation, use 'guild run --start %s'\n"
                         % (run.id, run.id))
        self.assertEqual((run.status, run.get("label")), ("staged", "first"))
        code, out = self.guild("run", "--start", run.id[:6], "-y")
        self.assertIn("lr=0.2 ", out)
        self.assertEqual(run.status, "completed")
        self.assertGuildError(self.guild("run", "--start", "1", "-y"),
                              "status is 'completed' but expected 'staged'")
        code, out = self.guild("run", "--restart", "1", "lr=0.3", "-y")
        self.assertIn("lr=0.3 ", out)
        self.assertEqual(run.flags["lr"], 0.3)
        self.assertEqual(run.status, "completed")
        self.assertEqual(len(self.runs()), 1)

    @any_start_mode
    def test_run_tags(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "lr=[0.1,0.2]", "-t", "a", "--tag",
                   "b", "-y")
        self.guild("run", "train.py", "-t", "c", "-l", "mine", "-y")
        runs = self.runs()
        self.assertEqual([(r.get("tags"), r.get("label")) for r in runs], [
            (["c"], "mine"),
            (["a", "b"], "a b epochs=2 fast=no lr=0.2 name=base"),
            (["a", "b"], "a b epochs=2 fast=no lr=0.1 name=base"),
            (["a", "b"], "a b")])
        self.assertEqual(len(self.guild("runs", "-Ft", "b", "-Fu")[1]
                             .splitlines()), 3)

    @any_start_mode
    def test_ls_and_cat_options(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "-l", "one", "-y")
        write(path(self.project, "train.py"), "open('out.txt', 'w')"
              ".write('hi')\nprint('done')\n")
        self.guild("run", "train.py", "-y")
        run = self.runs()[0]
        self.assertEqual(self.guild("ls"), (0, "%s:\n  out.txt\n  train.py\n"
                                            % run.dir))
        self.assertEqual(self.guild("ls", "-n", "-s")[1], "train.py\n")
        self.assertEqual(self.guild("ls", "-f", "-p", "out.txt")[1],
                         path(run.dir, "out.txt") + "\n")
        self.assertIn(".guild/output\n", self.guild("ls", "-a", "-n")[1])
        self.assertEqual(self.guild("ls", "-n", "-Fl", "one")[1],
                         "train.py\n")
        self.assertEqual(self.guild("cat", "-O"), (0, "done\n"))
        self.assertEqual(self.guild("cat", "-p", "out.txt"), (0, "hi"))
        self.assertIn("lr=0.1", self.guild("cat", "--output", "-Fl",
                                           "one")[1])
        self.assertGuildError(self.guild("cat", "-p", "nope"),
                              "nope does not exist for run")
        self.assertGuildError(self.guild("cat"), "specify -O/--output")

    def test_run_options_from_guild_ai(self):
        self.copy_sample("train.py")
        elsewhere = mkdtemp()
        run = lambda *args: guild_cmd(args, cwd=elsewhere,
                                      guild_home=self.home)
        code, out = run("-C", self.project, "run", "train.py", "lr=0.5",
                        "--print-cmd")
        self.assertEqual((code, out.split()[1:]), (0, ["train.py"]))
        trials = path(self.project, "trials.csv")
        self.assertEqual(run("-C", self.project, "run", "train.py",
                             "lr=[0.1,0.2]", "--save-trials", trials),
                         (0, "Saved 2 trial(s) to %s\n" % trials))
        with open(trials) as f:
            self.assertEqual(f.read().splitlines()[:2],
                             ["epochs,fast,lr,name,seed", "2,False,0.1,base,"])
        self.assertEqual(self.runs(), [])
        run("-C", self.project, "run", "train.py", "lr=0.5", "-y")
        code, out = run("-C", self.project, "run", "train.py", "lr=0.5",
                        "--needed", "-y")
        self.assertIn("Skipping run: %s already completed" %
                      self.runs()[0].short_id, out)
        run("-C", self.project, "run", "train.py", "lr=0.6", "--needed",
            "-y")
        self.assertEqual(len(self.runs()), 2)
        self.guild("run", "--proto", "2", "epochs=7", "--keep-batch", "-y")
        self.assertEqual(self.runs()[0].flags["lr"], 0.5)
        self.assertEqual(self.runs()[0].flags["epochs"], 7)
        self.assertGuildError(run("-C", path(elsewhere, "nope"), "runs"),
                              "-C %s" % path(elsewhere, "nope"))
        self.assertGuildError(self.guild("run", "train.py", "--no-gpus",
                                         "--gpus", "0", "-y"),
                              "--gpus and --no-gpus cannot be used")

    def test_no_gpus_and_stop_after(self):
        write(path(self.project, "gpu.py"), "import os, time\n"
              "print('gpus=%r' % os.environ['CUDA_VISIBLE_DEVICES'])\n"
              "time.sleep(float(os.environ.get('NAP', 0)))\n")
        self.assertEqual(self.guild("run", "gpu.py", "--no-gpus", "-y"),
                         (0, "gpus=''\n"))
        code, out = self.guild("run", "gpu.py", "--no-gpus", "--stop-after",
                               "0.005", "-y", env={"NAP": "30"})
        self.assertIn("its time (--stop-after) is up", out)
        self.assertEqual(self.runs()[0].status, "terminated")
        self.assertGuildError(self.guild("run", "gpu.py", "--stop-after",
                                         "0", "-y"), "--stop-after takes")

    @any_start_mode
    def test_diff(self):
        write(path(self.project, "d.py"), "x = 1\nprint('x is', x)\n")
        self.guild("run", "d.py", "-y")
        self.guild("run", "d.py", "x=2", "-y")
        old, new = self.runs()[1], self.runs()[0]
        code, out = self.guild("diff")
        self.assertEqual(code, 0)
        self.assertIn("--- %s/flags\n+++ %s/flags\n@@ -1 +1 @@\n-x: 1\n"
                      "+x: 2\n" % (old.short_id, new.short_id), out)
        self.assertIn("\n-label: x=1\n", out)
        self.assertIn("\n+label: x=2\n", out)
        self.assertNotIn("/d.py", out)  # the same source
        self.assertEqual(self.guild("diff", "--flags", "2", "2"), (0, ""))
        self.assertIn("-x is 1\n+x is 2\n", self.guild("diff", "-O")[1])
        self.assertIn("-x is 1\n+x is 2\n",
                      self.guild("diff", "-p", ".guild/output")[1])
        write(path(self.project, "d.py"), "x = 1\nprint('x:', x)\n")
        code, out = self.guild("diff", "--working")
        self.assertIn("--- %s/d.py\n+++ %s/d.py\n" % (
            new.short_id, self.project), out)
        self.assertIn("-print('x is', x)\n+print('x:', x)\n", out)
        if shutil.which("diff"):
            code, out = self.guild("diff", "-f", "-c", "diff -u")
            self.assertEqual(code, 0)
            self.assertIn("-x: 1\n+x: 2\n", out)
        self.assertGuildError(self.guild("diff", "1"), "diff takes two runs")
        self.assertGuildError(self.guild("diff", "-c", "no-such-diff"),
                              "diff program 'no-such-diff' not found")
        self.assertGuildError(self.guild("diff", "-Fo", "nope"),
                              "diff needs 2 runs: 0 match")

    @any_start_mode
    def test_export_and_import(self):
        self.copy_sample("train.py")
        write(path(self.project, "s.py"), "print('loss: 0.5')\n")
        self.guild("run", "s.py", "-y")
        self.guild("run", "train.py", "--stage", "-y")
        ids = [r.id for r in self.runs()]
        out_dir, out_zip = path(mkdtemp(), "runs"), path(mkdtemp(), "r.zip")
        self.assertEqual(self.guild("export", out_dir, "-y"),
                         (0, "Exported 2 run(s) to %s\n" % out_dir))
        self.assertEqual(sorted(os.listdir(out_dir)), sorted(ids))
        code, out = self.guild("runs", "export", out_zip, "2", "-y")
        self.assertEqual(out, "Exported 1 run(s) to %s\n" % out_zip)
        self.assertIn("Skipping %s: already in" % ids[1][:8],
                      self.guild("export", out_zip, ":", "-y")[1])
        other = mkdtemp()
        imp = lambda *args: guild_cmd(["import"] + list(args),
                                      guild_home=other)
        self.assertEqual(imp(out_zip, ids[1][:8], "-y"),
                         (0, "Imported 1 run(s)\n"))
        code, out = imp(out_dir, "-y")
        self.assertEqual(out, "Skipping %s: already in the store\n"
                         "Imported 1 run(s)\n" % ids[1][:8])
        self.assertEqual(imp(out_zip, "-y")[1].splitlines()[-1],
                         "Imported 0 run(s)")
        runs = guild.list_runs(path(other, "runs"))
        self.assertEqual([(r.id, r.status) for r in runs],
                         [(ids[0], "staged"), (ids[1], "completed")])
        self.assertEqual(runs[1].scalars(), {"loss": 0.5})
        self.assertEqual(sorted(os.listdir(other)), ["cache", "runs"])
        code, out = guild_cmd(["run", "queue", "run-once=yes", "-y"],
                              cwd=self.project, guild_home=other)
        self.assertIn("lr=0.1", out)  # the staged run was queued
        self.guild("export", out_dir, "--move", "1", "-y")  # there: kept
        self.guild("export", path(out_dir, "more"), "--move", "1", "-y")
        self.assertEqual([r.id for r in self.runs()], ids[1:])
        self.assertGuildError(imp(path(other, "nope")), "does not exist")
        self.assertGuildError(imp(path(self.project, "s.py")),
                              "is not a zip archive")
        self.assertGuildError(imp(out_zip, "--move"), "--move takes")

    @any_start_mode
    @unittest.skipIf(IS_WINDOWS, "symlinks need privileges")
    def test_export_zip_keeps_symlinks_as_links(self):
        # A link to a file outside, a dangling one and one to a directory:
        # a zip stores each as a link (it used to follow them, and stop at
        # the dangling one), and import makes the links again.
        outside = path(mkdtemp(), "data.txt")
        write(outside, "not the run's")
        write(path(self.project, "s.py"),
              "import os\n"
              "os.symlink(%r, 'data')\n"
              "os.symlink('/nonexistent-guild-test', 'dangling')\n"
              "os.makedirs('ckpt')\n"
              "open(os.path.join('ckpt', '1'), 'w').close()\n"
              "os.symlink('ckpt', 'latest')\n" % outside)
        self.guild("run", "s.py", "-y")
        [run] = self.runs()
        self.assertIn("  dangling\n  data\n  latest\n",
                      self.guild("ls")[1])
        out_zip = path(mkdtemp(), "r.zip")
        self.assertEqual(self.guild("export", out_zip, "-y")[0], 0)
        other = mkdtemp()
        self.assertEqual(guild_cmd(["import", out_zip, "-y"],
                                   guild_home=other),
                         (0, "Imported 1 run(s)\n"))
        copy = path(other, "runs", run.id)
        self.assertEqual([(n, os.readlink(path(copy, n))) for n in
                          ("data", "dangling", "latest")],
                         [("data", outside),
                          ("dangling", "/nonexistent-guild-test"),
                          ("latest", "ckpt")])
        self.assertTrue(os.path.isfile(path(copy, "ckpt", "1")))

    def test_run_dir(self):
        self.copy_sample("train.py")
        run_dir = path(mkdtemp(), "myrun")
        code, out = self.guild("run", "train.py", "--run-dir", run_dir,
                               "--stage", "-y")
        self.assertEqual(out, "train.py staged in '%s'\nTo start the "
                         "operation, use 'guild run --start %s'\n"
                         % (run_dir, run_dir))
        code, out = self.guild("run", "--start", run_dir, "-y")
        self.assertEqual(code, 0, out)
        self.assertEqual(guild._run_for_dir(run_dir).status, "completed")

    def test_source_snapshot_skips_guild_home_hidden_and_guild_py(self):
        self.copy_sample("train.py")
        os.makedirs(path(self.project, ".git"))
        write(path(self.project, ".git", "config"), "x")
        os.makedirs(path(self.project, "pkg"))
        write(path(self.project, "pkg", "mod.py"), "x = 1\n")
        write(path(self.project, "data.bin"), "\0\1\2")
        shutil.copy(GUILD_PY, self.project)  # vendored: the tool, not source
        home = path(self.project, "store")
        code, out = guild_cmd(["run", "train.py", "-y"], cwd=self.project,
                              guild_home=home,
                              guild_py=path(self.project, "guild.py"))
        self.assertEqual(code, 0, out)
        [run] = guild.list_runs(path(home, "runs"))
        self.assertEqual(sorted(run.get("sourcecode")),
                         ["pkg/mod.py", "train.py"])
        self.assertFalse(os.path.exists(path(run.dir, "guild.py")))

    def test_staged_run_runs_the_code_as_staged(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "--stage", "-y")
        write(path(self.project, "train.py"), "print('changed')\n")
        code, out = self.guild("run", "--start", "1", "-y")
        self.assertIn("lr=0.1", out)

    @any_start_mode
    def test_delete(self):
        self.copy_sample("train.py")
        for _ in range(3):
            self.guild("run", "train.py", "-y")
        code, out = self.guild("runs", "delete", "1", input="n\n")
        self.assertIn("You are about to delete the following runs:", out)
        self.assertEqual(len(self.runs()), 3)
        code, out = self.guild("runs", "delete", "1", "2", "-y")
        self.assertEqual(out, "Deleted 2 run(s)\n")
        self.assertEqual(len(self.runs()), 1)
        code, out = self.guild("runs", "rm", input="y\n")
        self.assertIn("Deleted 1 run(s)", out)
        self.assertEqual(self.runs(), [])

    @any_start_mode
    def test_runs_info(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "lr=0.5", "-y")
        code, out = self.guild("runs", "info")
        run = self.runs()[0]
        for line in ["id: %s" % run.id, "operation: train.py",
                     "status: completed", "exit_status: 0", "flags:",
                     "host: %s" % guild.HOST,
                     "  lr: 0.5", "run_dir: %s" % run.dir]:
            self.assertIn(line + "\n", out)
        # the command as a shell takes it back; a batch has none
        write(path(self.project, "say.py"), "import argparse\n"
              "p = argparse.ArgumentParser()\n"
              "p.add_argument('--msg', default='hi')\n"
              "print(p.parse_args().msg)\n")
        self.guild("run", "say.py", "msg=[hello world,x]", "-y")
        self.assertIn(" say.py '--msg=hello world'\n",
                      self.guild("runs", "info", "2")[1])
        self.assertNotIn("command:", self.guild("runs", "info", "3")[1])

    @any_start_mode
    def test_help_and_version(self):
        typed = [(cmd.name.split(), cmd.name) for cmd in
                 guild.COMMANDS.values()]
        typed += [(cmd.name.split()[:-1] + [alias], cmd.name) for cmd in
                  guild.COMMANDS.values() for alias in cmd.aliases]
        self.assertIn((["runs", "rm"], "runs delete"), typed)
        # In this process (a hundred helps in a second); one through the
        # real command line below.
        for args, name in [([], "")] + typed:
            with self.subTest(args=args), unittest.mock.patch.dict(
                    os.environ, {"COLUMNS": "80"}):
                code, out = guild_main(*args + ["--help"])
                self.assertEqual(code, 0)
                self.assertIn("usage: guild %s" % name, out)
                # each command's help line shows in its parent's help
                if args:
                    parent = guild_main(*args[:-1] + ["--help"])[1]
                    self.assertRegex(parent, r"\n +(\S+ \()?%s\b"
                                     % args[-1])
        code, out = self.guild("runs", "info", "--help")
        self.assertEqual((code, out[:22]), (0, "usage: guild runs info"))
        self.assertEqual(self.guild("--version"),
                         (0, "guild.py %s\n" % guild.__version__))

    @any_start_mode
    def test_options_are_never_abbreviated(self):
        # argparse took `--al` for `--all` and `-c` for `--clear`.
        self.assertGuildError(self.guild("runs", "--al"),
                              "unrecognized arguments: --al")
        self.assertGuildError(self.guild("compare", "--cs", "-"),
                              "unrecognized arguments: --cs")

    @any_start_mode  # it starts the script both ways itself
    @unittest.skipIf(not sys.platform.startswith("linux"), "reads /proc")
    def test_a_script_sees_the_same_whichever_way_it_starts(self):
        # What README's Runs section claims: nothing the script can look
        # at differs between a fork and a fresh interpreter.
        self.copy_sample("observe.py")
        seen = []
        for env in ({}, {"GUILD_NO_FORK": "1"}):
            code, out = self.guild("run", "observe.py", "-y", env=env)
            self.assertEqual(code, 0, out)
            seen.append(json.loads(out))
        self.maxDiff = None
        self.assertEqual(seen[0], seen[1])
        self.assertEqual((seen[0]["argv"], seen[0]["file"], seen[0]["cwd"],
                          seen[0]["path"][0], seen[0]["own session"]),
                         (["observe.py"], "RUN_DIR/observe.py" if
                          sys.version_info >= (3, 9) else "observe.py",
                          "RUN_DIR", "RUN_DIR", True))

    def test_script_process_starts_and_ends_as_an_interpreter(self):
        # Linux forks the guild process for a script; GUILD_NO_FORK=1
        # starts a fresh interpreter. A script cannot tell them apart.
        self.copy_sample("ends.py")
        start = ("name=__main__ argv=['ends.py']\nINFO logged\n")
        cases = [
            ("normally", 0, "completed", ["thread done\natexit ran\n"]),
            ("raise", 1, "error", [
                "Traceback (most recent call last):\n"
                "  File \"%s\", line 24, in <module>\n",
                "ValueError: boom\n", "thread done\natexit ran\n"]),
            ("exit", 1, "error", ["bad thing\n", "thread done\n",
                                  "atexit ran\n"]),
            ("interrupt", 130, "terminated", [
                "KeyboardInterrupt\n", "thread done\natexit ran\n"]),
        ]
        for env in ({}, {"GUILD_NO_FORK": "1"}):
            for end, code, status, parts in cases:
                with self.subTest(env=env, end=end):
                    result = self.guild("run", "ends.py", "end=" + end,
                                        "-y", env=env)
                    self.assertEqual(result[0], code, result[1])
                    out = result[1]
                    script = path(self.runs()[0].dir, "ends.py") \
                        if sys.version_info >= (3, 9) else "ends.py"
                    parts = [part.replace("%s", script) for part in parts]
                    self.assertTrue(out.startswith(start), out)
                    self.assertNotIn("guild.py", out)
                    self.assertTrue(out.endswith(parts[-1]), out)
                    at = [out.find(part) for part in parts]
                    self.assertNotIn(-1, at, out)
                    self.assertEqual(at, sorted(at), out)
                    run = self.runs()[0]
                    self.assertEqual(run.status, status)
                    with open(run.guild_path("output")) as f:
                        self.assertEqual(f.read(), out)

    def test_script_imports_its_own_modules_and_guild(self):
        # A json.py beside the script is the script's json, as under plain
        # python, and breaks neither guild's runner nor its argparse probe;
        # `import guild` gets guild.py, its namespaces included. Also with
        # guild.py copied into the project, beside that json.py.
        write(path(self.project, "json.py"), "WHOSE = 'mine'\n")
        write(path(self.project, "uses.py"), (
            "import argparse, json, sys\n"
            "import guild, guild.batch_util\n"
            "from guild import op_util\n"
            "p = argparse.ArgumentParser()\n"
            "p.add_argument('--n', type=int, default=1)\n"
            "args = p.parse_args()\n"
            "print(json.WHOSE, args.n, guild.batch_util.init_trial_run"
            " is guild.init_trial_run, op_util.set_run_pending"
            " is guild.set_run_pending)\n"))
        shutil.copy(GUILD_PY, path(self.project, "copied.py"))
        for env in ({}, {"GUILD_NO_FORK": "1"}):
            for guild_py in (GUILD_PY, path(self.project, "copied.py")):
                with self.subTest(env=env, guild_py=guild_py):
                    home = mkdtemp()  # a new store: the probe runs again
                    code, out = guild_cmd(
                        ["run", "uses.py", "n=3", "-y"], cwd=self.project,
                        guild_home=home, env=env, guild_py=guild_py)
                    self.assertEqual((code, out), (0, "mine 3 True True\n"))

    def test_script_ends_as_under_python(self):
        # Each script ends under plain python with this code and output;
        # under guild too, in both start modes, with the run's status.
        scripts = {
            "pools.py": (  # executors left open: Python shuts them down
                "import concurrent.futures as cf\n"
                "t = cf.ThreadPoolExecutor(2)\n"
                "p = cf.ProcessPoolExecutor(2)\n"
                "print(t.submit(pow, 2, 3).result(),"
                " p.submit(pow, 3, 2).result())\n",
                0, "8 9\n", "completed"),
            "exit256.py": ("import sys\nsys.exit(256)\n", 0, "",
                           "completed"),
            "forks.py": (  # a forked child's exit 0 is not the run's
                "import os, sys, time\n"
                "if os.fork() == 0:\n"
                "    time.sleep(0.2)\n"
                "    sys.exit(0)\n"
                "sys.exit('parent failed')\n",
                1, "parent failed\n", "error"),
            "unclosed.py": (  # the interpreter's teardown flushes it
                "f = open('unclosed.txt', 'w')\nf.write('kept')\n",
                0, "", "completed"),
        }
        for name, (source, _code, _out, _status) in scripts.items():
            write(path(self.project, name), source)
        for name, (_source, code, out, status) in scripts.items():
            with self.subTest(script=name, python=True):
                p = subprocess.run([sys.executable, name], cwd=self.project,
                                   stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=60)
                self.assertEqual((p.returncode, p.stdout.decode()),
                                 (code, out))
            for env in ({}, {"GUILD_NO_FORK": "1"}):
                with self.subTest(script=name, env=env):
                    self.assertEqual(self.guild("run", name, "-y", env=env,
                                                timeout=60), (code, out))
                    run = self.runs()[0]
                    time.sleep(0.3 if name == "forks.py" else 0)
                    self.assertEqual((run.status, run.get("exit_status")),
                                     (status, code))
        for run in self.runs():
            if run.op_desc == "unclosed.py":
                with open(path(run.dir, "unclosed.txt")) as f:
                    self.assertEqual(f.read(), "kept")

    @any_start_mode
    def test_main_as_a_library_restores_what_it_changed(self):
        saved = signal.getsignal(signal.SIGTERM) if not IS_WINDOWS else None
        os.environ.pop("GUILD_HOME")
        self.addCleanup(os.environ.__setitem__, "GUILD_HOME", self.home)
        with io.StringIO() as out:
            stdout, sys.stdout = sys.stdout, out
            try:
                self.assertEqual(guild.main(["-H", self.home, "runs"]), 0)
            finally:
                sys.stdout = stdout
        self.assertNotIn("GUILD_HOME", os.environ)
        if not IS_WINDOWS:
            self.assertIs(signal.getsignal(signal.SIGTERM), saved)

    @unittest.skipIf(IS_WINDOWS, "POSIX signals")
    def test_stop_signals_leave_run_terminated_and_reach_its_group(self):
        # SIGTERM, Ctrl-C (SIGINT) and the terminal closing (SIGHUP, to
        # the command's process group) stop the script and the processes
        # it started; the run ends terminated.
        write(path(self.project, "family.py"),
              "import subprocess, sys, time\n"
              "c = subprocess.Popen([sys.executable, '-c',"
              " 'import time; time.sleep(60)'])\n"
              "open('child.pid', 'w').write(str(c.pid))\n"
              "print('sleeping', flush=True)\n"
              "time.sleep(60)\n")
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with self.subTest(signal=signum):
                p = self.start_guild("run", "family.py", "-y",
                                     new_group=True)
                run = self.runs()[0]
                self.assertEqual(run.status, "running")
                with open(path(run.dir, "child.pid")) as f:
                    child = int(f.read())
                if signum == signal.SIGHUP:
                    os.killpg(p.pid, signum)
                else:
                    p.send_signal(signum)
                self.assertEqual(p.wait(timeout=30), 128 + signum)
                self.assertEqual(run.status, "terminated")
                self.assertProcessEnds(child)

    def assertProcessEnds(self, pid):
        for _ in range(200):
            if guild._proc_token(pid) is None:
                return
            time.sleep(0.02)
        self.fail("process %d still runs" % pid)

    @unittest.skipIf(not sys.platform.startswith("linux"),
                     "the script's process dies with its watcher on Linux")
    def test_killed_command_takes_its_script_with_it(self):
        # kill -9 of a foreground run's process group, and of a queue's:
        # the script's process dies too, and the run ends error, saying
        # why; a queue then leaves it (it is not staged again).
        self.copy_sample("sleep.py")
        p = self.start_guild("run", "sleep.py", "-y", new_group=True)
        run = self.runs()[0]
        script = guild._read_json(run.guild_path("proc.json"))["child"]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        self.assertProcessEnds(script["pid"])
        self.assertEqual(run.status, "error")
        code, out = self.guild("runs", "info")
        self.assertIn("died without recording an exit", out)

        self.guild("run", "sleep.py", "--stage", "-y")
        staged = self.runs()[0]
        p = self.start_guild("run", "queue", "poll-interval=1", "-y",
                             new_group=True)
        script = guild._read_json(staged.guild_path("proc.json"))["child"]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        self.assertProcessEnds(script["pid"])
        self.assertEqual(staged.status, "error")
        p = self.start_guild("run", "queue", "poll-interval=1", "-y",
                             until=b"Waiting for staged runs")
        p.send_signal(signal.SIGHUP)
        self.assertEqual(p.wait(timeout=30), 128 + signal.SIGHUP)
        self.assertEqual(staged.status, "error")

    @unittest.skipIf(IS_WINDOWS, "POSIX signals")
    def test_queue_hangup_ends_its_run_terminated(self):
        self.copy_sample("sleep.py")
        self.guild("run", "sleep.py", "--stage", "-y")
        run = self.runs()[0]
        p = self.start_guild("run", "queue", "poll-interval=1", "-y",
                             new_group=True)
        os.killpg(p.pid, signal.SIGHUP)
        self.assertEqual(p.wait(timeout=30), 128 + signal.SIGHUP)
        self.assertEqual(run.status, "terminated")


# ---------------------------------------------------------------------------
# 10-12. Batches, optimizers and the queue
# ---------------------------------------------------------------------------


class BatchTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def test_grid_order_and_failed_trial(self):
        self.copy_sample("fail.py")
        code, out = self.guild("run", "fail.py", "code=[0,2,0]", "-y")
        self.assertEqual(code, 0, out)
        runs = self.runs()
        self.assertEqual([r.op_desc for r in runs],
                         ["fail.py"] * 3 + ["fail.py+"])
        self.assertEqual([r.status for r in runs],
                         ["completed", "error", "completed", "completed"])
        self.assertIn("exited with an error (2)", out)
        self.assertEqual(runs[1].get("batch"), runs[3].id)

    def test_cartesian_product_in_name_then_value_order(self):
        grid = guild._Grid({"b": [1, 2], "a": ["x", "y"], "c": 0})
        self.assertEqual(
            [grid.trial(i) for i in range(grid.size)],
            [{"a": "x", "b": 1, "c": 0}, {"a": "x", "b": 2, "c": 0},
             {"a": "y", "b": 1, "c": 0}, {"a": "y", "b": 2, "c": 0}])

    def test_batch_output_holds_trial_output(self):
        self.copy_sample("say.py", project="batch")
        self.guild("run", "say.py", "msg=[a,b]", "-y")
        batch = self.runs()[-1]
        with open(batch.guild_path("output")) as f:
            text = f.read()
        self.assertIn("Running trial", text)
        self.assertIn("a\n", text)
        self.assertIn("b\n", text)


class SearchSpaceTest(unittest.TestCase):
    def test_forms(self):
        d = guild.decode_flag_val
        self.assertEqual(d("[1:10]"), {"$dist": "uniform", "low": 1,
                                       "high": 10})
        self.assertEqual(d("uniform[0.0:1.0]"),
                         {"$dist": "uniform", "low": 0.0, "high": 1.0})
        self.assertEqual(d("loguniform[1e-5:1e-1]"),
                         {"$dist": "loguniform", "low": 1e-5, "high": 0.1})
        self.assertEqual(d("range[1:5]"), [1, 2, 3, 4, 5])
        self.assertEqual(d("range[1:6:2]"), [1, 3, 5])
        self.assertEqual(d("range[5:1:-2]"), [5, 3, 1])
        self.assertEqual(d("range[0:0.3:0.1]"), [0.0, 0.1, 0.2, 0.3])
        self.assertEqual(d("linspace[0:1:3]"), [0.0, 0.5, 1.0])
        self.assertEqual(d("linspace[0:1]"), [0.0, 0.25, 0.5, 0.75, 1.0])
        self.assertEqual(d("logspace[-2:0:3]"), [0.01, 0.1, 1.0])
        self.assertEqual(d("geomspace[2:32:5]"), [2.0, 4.0, 8.0, 16.0, 32.0])
        self.assertEqual(d("a[1:2]"), "a[1:2]")
        self.assertEqual(d("['a:b']"), ["a:b"])

    def test_errors(self):
        for bad in ["range[1:]", "range[1:5:0]", "range[1:5:-1]",
                    "linspace[a:b:3]", "linspace[0:1:0]",
                    "linspace[0:1:2.5]", "[3:1]", "[1:1]",
                    "loguniform[0:1]", "uniform[1]", "geomspace[0:10:3]",
                    "geomspace[-1:10:3]", "logspace[1:2:3:4]"]:
            with self.subTest(bad=bad):
                with self.assertRaises(guild.FlagError):
                    guild.decode_flag_val(bad)

    def test_encode_round_trip(self):
        for text in ["uniform[1:10]", "loguniform[1e-05:0.1]"]:
            self.assertEqual(guild.encode_flag_val(
                guild.decode_flag_val(text)), text)
        self.assertEqual(guild.encode_flag_val("range[1:]"), "'range[1:]'")

    def test_typed_by_flag(self):
        c = guild._coerce_flag_val
        self.assertEqual(c("x", "[1:10]", {"type": "float"}),
                         {"$dist": "uniform", "low": 1.0, "high": 10.0})
        self.assertEqual(c("x", "range[1:3]", {"type": "float"}), [1, 2, 3])
        # A float range for an int flag, unless the script declares it.
        self.assertEqual(c("x", "[1:2.5]", {"type": "int"}),
                         {"$dist": "uniform", "low": 1, "high": 2.5})
        self.assertEqual(c("x", "linspace[0:1:3]", {"type": "int"}),
                         [0.0, 0.5, 1.0])
        declared = {"type": "int", "declared": True}
        for raw, fd in [("linspace[0:1:3]", declared),
                        ("loguniform[1:2]", declared),
                        ("[1:2.5]", declared),
                        ("[1:2]", {"type": "string"})]:
            with self.assertRaises(guild.FlagError):
                c("x", raw, fd)

    def attrs(self, flags, optimizer, max_trials=None, seed=None, rows=None):
        return {"op": {"kind": "batch", "name": optimizer},
                "proto": {"flags": flags, "given": sorted(flags)},
                "max_trials": max_trials, "random_seed": seed,
                "batch_rows": rows}

    def test_random_trials_are_seeded(self):
        flags = {"a": guild.decode_flag_val("[1:100]"),
                 "b": guild.decode_flag_val("loguniform[1e-4:1]"),
                 "c": ["x", "y"], "d": 7}
        one = guild.batch_trials(self.attrs(flags, "random", 30, 11))
        two = guild.batch_trials(self.attrs(flags, "random", 30, 11))
        other = guild.batch_trials(self.attrs(flags, "random", 30, 12))
        self.assertEqual(one, two)
        self.assertNotEqual(one, other)
        self.assertEqual(len(one), 30)
        for t in one:
            self.assertIsInstance(t["a"], int)
            self.assertTrue(1 <= t["a"] <= 100)
            self.assertTrue(1e-4 <= t["b"] <= 1)
            self.assertIn(t["c"], ["x", "y"])
            self.assertEqual(t["d"], 7)
        self.assertEqual(len(guild.batch_trials(
            self.attrs(flags, "random"))), 20)

    def test_grid_cut_by_max_trials_keeps_grid_order(self):
        flags = {"a": list(range(10)), "b": [0, 1]}
        full = guild.batch_trials(self.attrs(flags, "+"))
        self.assertEqual(len(full), 20)
        cut = guild.batch_trials(self.attrs(flags, "+", 5, 3))
        self.assertEqual(cut, guild.batch_trials(self.attrs(flags, "+", 5,
                                                            3)))
        self.assertEqual(len(cut), 5)
        self.assertEqual(cut, [t for t in full if t in cut])

    def test_batch_rows_with_given_values(self):
        flags = {"a": 9, "b": [1, 2], "c": 0}
        attrs = self.attrs(flags, "+", rows=[{"a": 1, "c": 5}, {"a": 2}])
        attrs["proto"]["given"] = ["b"]
        self.assertEqual(guild.batch_trials(attrs), [
            {"a": 1, "b": 1, "c": 5}, {"a": 1, "b": 2, "c": 5},
            {"a": 2, "b": 1, "c": 0}, {"a": 2, "b": 2, "c": 0}])

    def test_render_label(self):
        self.assertEqual(guild.render_label("lr=${lr} ${x} $y",
                                            {"lr": 0.1}),
                         "lr=0.1 ${x} $y")


class BatchStopTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    @unittest.skipIf(IS_WINDOWS, "POSIX signals")
    def test_ctrl_c_stops_trial_and_batch(self):
        self.copy_sample("sleep.py")
        p = self.start_guild("run", "sleep.py", "seconds=[30,31]", "-y")
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(timeout=30), 128 + signal.SIGINT)
        out = p.stdout.read().decode()
        self.assertIn("Stopping batch", out)
        self.assertIn("Batch finished: 0 completed, 0 failed, 1 staged, "
                      "1 terminated", out)
        self.assertEqual([(r.op_desc, r.status) for r in self.runs()],
                         [("sleep.py", "terminated"),
                          ("sleep.py", "staged"),
                          ("sleep.py+", "terminated")])

    def test_random_batch_with_no_space_leaves_no_run(self):
        self.copy_sample("train.py")
        code, out = self.guild("run", "train.py", "--optimizer", "random",
                               "-y")
        self.assertNotEqual(code, 0)
        self.assertIn("guild: random search needs a search space", out)
        self.assertEqual(self.runs(), [])
        code, out = self.guild("run", "train.py", "--max-trials", "3", "-y")
        self.assertIn("guild: --max-trials and --random-seed apply to "
                      "batches", out)
        code, out = self.guild("run", "train.py", "lr=[1,2]", "-o", "bayes",
                               "-y")
        self.assertIn("guild: unsupported optimizer 'bayes'", out)
        self.assertEqual(self.runs(), [])

    def test_restart_a_run_keeps_its_other_flags(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "lr=0.5", "epochs=7", "-y")
        code, out = self.guild("run", "--restart", "1", "name=x", "-y")
        self.assertEqual(out, "lr=0.5 epochs=7 name=x fast=False "
                         "seed=None\n")
        self.assertEqual(self.runs()[0].get("label"),
                         "epochs=7 fast=no lr=0.5 name=x")
        code, out = self.guild("run", "--restart", "1", "lr=[1,2]", "-y")
        self.assertIn("guild: a restart cannot make a run a batch", out)


def _tpe_space(**flags):
    return guild._tpe_space({n: guild.decode_flag_val(v)
                             for n, v in flags.items()})


def _tpe_search(space, fn, seed, budget, **kw):
    """Run tpe in-process on fn (of a dict of flag values); return the
    history as _tpe_propose sees it."""
    history = []
    for n in range(budget):
        point = guild._tpe_propose(space, history,
                                   random.Random("%s:%d" % (seed, n)), **kw)
        vals = {d.name: d.decode(x) for d, x in zip(space, point)}
        history.append(([d.encode(vals[d.name]) for d in space], fn(vals)))
    return history


class TpeSamplerTest(unittest.TestCase):
    """The sampler called directly: fast, and what the CLI builds on."""

    def test_space_from_flags(self):
        space = _tpe_space(lr="loguniform[1e-5:1e-1]", opt="[sgd,adam]",
                           layers="[1:6]", dropout="[0.0:0.5]", seed="7",
                           one="[3]")
        self.assertEqual([(d.name, d.kind) for d in space], [
            ("dropout", "float"), ("layers", "int"), ("lr", "log"),
            ("one", "choice"), ("opt", "choice")])

    def test_proposals_stay_inside_the_space_with_their_types(self):
        space = _tpe_space(lr="loguniform[1e-5:1e-1]", opt="[sgd,adam,1]",
                           layers="[1:6]", dropout="[0.0:0.5]")
        history = _tpe_search(space, lambda f: f["dropout"] + f["layers"],
                              1, 40, random_starts=5)
        lrs = []
        for point, _ in history:
            vals = {d.name: d.decode(x) for d, x in zip(space, point)}
            self.assertIsInstance(vals["layers"], int)
            self.assertTrue(1 <= vals["layers"] <= 6)
            self.assertIsInstance(vals["lr"], float)
            self.assertTrue(1e-5 <= vals["lr"] <= 1e-1)
            self.assertIn(vals["opt"], ["sgd", "adam", 1])
            self.assertTrue(0.0 <= vals["dropout"] <= 0.5)
            lrs.append(vals["lr"])
        # A log scale: as many values below 1e-3 as above (uniform would
        # put 99% above).
        self.assertGreater(sum(1 for lr in lrs if lr < 1e-3), 8)
        self.assertGreater(sum(1 for lr in lrs if lr > 1e-3), 8)
        # The model finds the low corner of dropout and layers, and most of
        # its proposals are better than the random starts'.
        losses = [loss for _, loss in history]
        self.assertLess(min(losses), 1.02)
        self.assertLess(sorted(losses[5:])[17], sorted(losses[:5])[2])

    def test_end_values_of_whole_numbers_are_proposed(self):
        space = _tpe_space(n="[1:3]")
        seen = {space[0].decode(p[0]) for p, _ in _tpe_search(
            space, lambda f: -f["n"], 1, 30, random_starts=3)}
        self.assertEqual(seen, {1, 2, 3})

    def test_seeds_repeat(self):
        space = _tpe_space(x="[0.0:1.0]", y="[a,b,c]")
        def fn(f):
            return f["x"] + (f["y"] == "a")
        one = _tpe_search(space, fn, 5, 25, random_starts=5)
        self.assertEqual(one, _tpe_search(space, fn, 5, 25, random_starts=5))
        self.assertNotEqual(one, _tpe_search(space, fn, 6, 25,
                                             random_starts=5))

    def test_bad_trials_push_proposals_away(self):
        # Good trials at 0.5; bad ones (failed, no objective, or in flight)
        # crowd 0.4: proposals go the other way from 0.5. Were bad trials
        # ignored, both sides would be alike.
        space = _tpe_space(x="[0.0:1.0]")
        history = [([0.5], 0.0), ([0.5], 0.0)] + [([0.4], None)] * 10 + [
            ([0.1], 1.0), ([0.9], 1.0)]
        sides = [guild._tpe_propose(space, history, random.Random(seed),
                                    random_starts=0)[0] > 0.5
                 for seed in range(20)]
        self.assertGreater(sum(sides), 15)

    def test_in_flight_proposals_spread_out(self):
        # Trials in flight count as bad (the constant liar, at
        # _TPE_PENDING_WEIGHT), so proposals made before their results
        # differ and keep apart.
        space = _tpe_space(x="[0.0:1.0]")
        scored = [([x / 10], (x / 10 - 0.5) ** 2) for x in range(11)]
        gaps = {}
        for liar in (True, False):
            gaps[liar] = []
            for seed in range(10):
                pending = []
                for k in range(4):
                    rnd = random.Random("%d:%d" % (seed, k))
                    history = scored + ([(p, None) for p in pending]
                                        if liar else [])
                    pending.append(guild._tpe_propose(
                        space, history, rnd, random_starts=0,
                        pending=set(range(len(scored), len(history)))))
                xs = sorted(p[0] for p in pending)
                gaps[liar].append(min(b - a for a, b in zip(xs, xs[1:])))
        self.assertTrue(all(gap > 0 for gap in gaps[True]))
        # (1.7x here at _TPE_PENDING_WEIGHT 0.3; 6.5x at full weight)
        self.assertGreater(sum(gaps[True]), 1.5 * sum(gaps[False]))

    def test_beats_random_search_on_a_1d_function(self):
        # Same seeds, same budget: random search's trials are those a
        # random batch makes. Deterministic.
        def fn(f):
            return (f["x"] - 0.73) ** 2
        flags = {"x": guild.decode_flag_val("[0.0:1.0]")}
        space = guild._tpe_space(flags)
        wins, ratios = 0, []
        for seed in range(1, 11):
            rand = min(fn(t) for t in guild.batch_trials({
                "op": {"kind": "batch", "name": "random"},
                "proto": {"flags": flags}, "max_trials": 30,
                "random_seed": seed}))
            tpe = min(v for _, v in _tpe_search(space, fn, seed, 30))
            wins += tpe < rand
            ratios.append(rand / tpe)
        self.assertGreaterEqual(wins, 8)
        self.assertGreater(sorted(ratios)[5], 10)

    def test_proposal_with_no_result_yet_is_random(self):
        space = _tpe_space(x="[0.0:1.0]")
        history = [([0.5], None)] * 20
        rnd = random.Random(3)
        self.assertEqual(guild._tpe_propose(space, history, rnd),
                         [random.Random(3).uniform(0.0, 1.0)])


TPE_SCRIPT = """\
import os, sys, time
x = 0.5
fail = 0.9
print("loss: %f" % ((x - 0.3) ** 2))
print("acc: %f" % (1 - x))
if x > fail:
    sys.exit(1)
"""


class TpeBatchTest(GuildTestCase):
    """tpe through the command line."""
    starts_scripts = True  # also run in the fresh-interpreter pass

    def setUp(self):
        super().setUp()
        write(path(self.project, "quad.py"), TPE_SCRIPT)

    def trials(self, batch):
        return sorted((r for r in self.runs() if r.get("batch") == batch.id),
                      key=lambda r: r.get("created"))

    def test_sequential_batch(self):
        code, out = self.guild("run", "quad.py", "x=[0.0:1.0]", "fail=2",
                               "-o", "tpe", "-m", "8", "-Fo",
                               "random-starts=3", "--random-seed", "4", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("Batch finished: 8 completed", out)
        self.assertIn("Best trial ", out)
        batch = self.runs()[-1]
        self.assertEqual(batch.op_desc, "quad.py+tpe")
        trials = self.trials(batch)
        self.assertEqual(len(trials), 8)
        losses = [(t.flags["x"] - 0.3) ** 2 for t in trials]
        best = min(range(8), key=lambda i: losses[i])
        code, out = self.guild("runs", "info", batch.id[:8])
        self.assertIn("best_trial: %s (trial %d of 8, loss " % (
            trials[best].id, best + 1), out)
        self.assertIn("best_flags:\n  fail: 2\n  x: %s\n" % (
            guild.encode_flag_val(trials[best].flags["x"])), out)
        # The same seed proposes the same trials.
        self.guild("run", "quad.py", "x=[0.0:1.0]", "fail=2", "-o", "tpe",
                   "-m", "8", "-Fo", "random-starts=3", "--random-seed", "4",
                   "-y")
        again = self.trials([r for r in self.runs()
                             if r.op_desc == "quad.py+tpe"][0])
        self.assertEqual([t.flags for t in again], [t.flags for t in trials])

    def test_failed_trials_count_as_bad(self):
        # Trials with x > fail print the best loss, then fail: the model
        # learns to avoid them, and they are never the best.
        code, out = self.guild("run", "quad.py", "x=[0.0:1.0]", "fail=0.25",
                               "-o", "tpe", "-m", "12", "-Fo",
                               "random-starts=4", "--random-seed", "1",
                               "--maximize", "acc", "-y")
        self.assertEqual(code, 0, out)
        batch = self.runs()[-1]
        trials = self.trials(batch)
        failed = [t for t in trials if t.status == "error"]
        self.assertTrue(failed)
        self.assertIn("failed", out)
        code, out = self.guild("runs", "info", batch.id[:8])
        best = [line for line in out.splitlines()
                if line.startswith("best_trial: ")][0]
        self.assertNotIn(best.split()[1], [t.id for t in failed])
        done = sorted((t for t in trials if t.status == "completed"),
                      key=lambda t: -(1 - t.flags["x"]))
        self.assertIn("best_trial: %s" % done[0].id, best)
        self.assertIn(", acc ", best)
        # An objective no trial prints: the search is random, and says so.
        code, out = self.guild("run", "quad.py", "x=[0.0:1.0]", "-o", "tpe",
                               "-m", "2", "-X", "accuracy", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("No trial printed a finite accuracy: each counted as "
                      "bad, so the search was random", out)

    @unittest.skipIf(IS_WINDOWS, "POSIX signals")
    def test_stopped_batch_restarts_from_the_store(self):
        # The fourth trial to start sleeps, so that the batch stops in it.
        write(path(self.project, "slow.py"),
              TPE_SCRIPT + "started = len(os.listdir(os.environ['MARKS']))\n"
              "open(os.path.join(os.environ['MARKS'], os.environ['RUN_ID'])"
              ", 'w').close()\n"
              "if started == 3:\n"
              "    print('sleeping', flush=True)\n    time.sleep(30)\n")
        marks = mkdtemp()
        os.environ["MARKS"] = marks
        self.addCleanup(os.environ.pop, "MARKS")
        p = self.start_guild("run", "slow.py", "x=[0.0:1.0]", "-o", "tpe",
                             "-m", "6", "-Fo", "random-starts=2",
                             "--random-seed", "2", "-y")
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        # Its closing line counts the trial it was in as it ended.
        self.assertIn("Batch finished: 3 completed, 0 failed, 0 staged, "
                      "1 terminated", p.stdout.read().decode())
        batch = [r for r in self.runs() if r.op_desc == "slow.py+tpe"][0]
        before = self.trials(batch)
        self.assertEqual([t.status for t in before],
                         ["completed"] * 3 + ["terminated"])
        self.assertEqual(batch.status, "terminated")
        summaries = guild._batch_trial_summaries(batch)
        expected = guild._tpe_next_flags(guild._tpe_space(
            batch._attrs()["proto"]["flags"]), summaries, batch._attrs())
        code, out = self.guild("run", "--restart", batch.id, "-y")
        self.assertEqual(code, 0, out)
        after = self.trials(batch)
        self.assertEqual(len(after), 6)
        self.assertEqual([t.id for t in after[:4]], [t.id for t in before])
        self.assertEqual(after[4].flags["x"], expected["x"])
        self.assertEqual([t.status for t in after[4:]], ["completed"] * 2)
        self.assertEqual(batch.status, "completed")
        # Done, it has nothing to run, and says so; -m goes on.
        code, out = self.guild("run", "--restart", batch.id, "-y")
        self.assertIn("The batch has 6 of 6 trials: nothing to run ('guild "
                      "run --restart %s -m N' goes on to N)" % batch.short_id,
                      out)
        code, out = self.guild("run", "--restart", batch.id, "-m", "8", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("Batch finished: 7 completed, 0 failed, 0 staged, "
                      "1 terminated", out)  # the stopped one counts
        self.assertEqual(len(self.trials(batch)), 8)
        self.assertGuildError(self.guild("run", "--restart", after[0].id,
                                         "-m", "8", "-y"),
                              "but for a tpe batch")
        self.assertGuildError(self.guild("run", "--start", batch.id, "-m",
                                         "8", "-y"),
                              "--max-trials cannot be used with --start")

    def test_staged_trials_in_flight_for_queues(self):
        p = self.start_guild("run", "quad.py", "x=[0.0:1.0]", "-o", "tpe",
                             "-m", "7", "--stage-trials", "-Fo",
                             "in-flight=3", "-Fo", "random-starts=2", "-y",
                             until=b"staged as")
        time.sleep(0.3)
        staged = [r for r in self.runs() if r.status == "staged"]
        self.assertEqual(len(staged), 3)  # no more: none has finished
        queue = self.start_guild("run", "queue", "poll-interval=1", "-y",
                                 until=b"Processing staged runs")
        self.addCleanup(queue.kill)
        self.assertEqual(p.wait(timeout=60), 0)
        out = p.stdout.read().decode()
        self.assertIn("Batch finished: ", out)
        trials = [r for r in self.runs() if r.op_desc == "quad.py"]
        self.assertEqual(len(trials), 7)
        self.assertEqual({t.status for t in trials} - {"completed",
                                                       "error"}, set())
        self.assertEqual(len({t.flags["x"] for t in trials}), 7)
        queue.send_signal(signal.SIGTERM)
        queue.wait(timeout=30)

    def test_queues_leave_a_staged_batch_that_stages_trials_alone(self):
        # A queue that ran such a batch would wait for itself to run its
        # trials: queues leave it staged and say how to start it.
        code, out = self.guild("run", "quad.py", "x=[0.0:1.0]", "fail=2",
                               "-o", "tpe", "-m", "3", "--stage-trials",
                               "-Fo", "in-flight=2", "-Fo",
                               "random-starts=2", "--stage", "-y")
        self.assertEqual(code, 0, out)
        [batch] = self.runs()
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("Staged batch %s stages its trials for queues as "
                      "results come in, so no queue starts it: start it "
                      "with 'guild run --start %s' (-b: in the background)"
                      % (batch.id, batch.short_id), out)
        self.assertEqual(batch.status, "staged")
        # Slurm refuses it too: no worker would start it.
        self.assertGuildError(self.guild("slurm", "submit", "--dry-run"),
                              "run %s is a tpe batch that stages its "
                              "trials as results come in" % batch.short_id)
        self.assertGuildError(self.guild("run", "--restart", batch.id, "-b",
                                         "-y"), "not a --restart")
        code, out = self.guild("run", "--start", batch.id, "-b", "-y")
        self.assertEqual(out, "Started %s in the background (guild watch "
                         "%s follows it)\n" % (batch.id, batch.short_id))
        # Started, the batch stages trials; a Slurm submission of them
        # records the batch, so that its workers take the trials it stages
        # later, and wait for them while it runs.
        def staged():
            return [r.id for r in self.runs()
                    if r.status == "staged" and r.op_desc == "quad.py"]
        self.wait_for(staged, what="a trial")
        staged = staged()
        self.assertEqual(guild._feeder_batches(staged), {batch.id})
        self.assertIsNone(guild._claim_next_staged(None, only=set()))
        self.assertTrue(guild._any_unfinished([batch.id]))
        run = guild._claim_next_staged(None, only=set(),
                                       feeders={batch.id})
        self.assertIn(run.id, staged)
        guild._release_claim(run)
        queue = self.start_guild("run", "queue", "poll-interval=1", "-y",
                                 until=b"Processing staged runs")
        self.addCleanup(queue.kill)
        self.wait_for(lambda: batch.status == "completed", what="the batch")
        self.assertEqual([r.status for r in self.runs()
                          if r.op_desc == "quad.py"], ["completed"] * 3)
        queue.send_signal(signal.SIGTERM)
        queue.wait(timeout=30)

    def test_late_scalars_are_read_again(self):
        # A queue may write a trial's last scalars just after the trial's
        # script recorded its exit: a finished trial without the objective
        # is read again for a while, then taken as it is.
        self.guild("run", "quad.py", "-y")
        [done] = guild.run_summaries()
        self.assertIn("loss", done["scalars"])
        early = dict(done, scalars={}, stopped=guild._timestamp())
        [again] = guild._reread_unfinished([early], "loss")
        self.assertIn("loss", again["scalars"])
        late = dict(early, stopped=1)
        self.assertEqual(guild._reread_unfinished([late], "loss"), [late])
        # Meanwhile, in a batch whose trials queues run, it counts as in
        # flight, not as bad; a failed trial, or one that ended long ago,
        # is bad.
        space = guild._tpe_space({"x": guild.decode_flag_val("[0.0:1.0]")})
        trials = [dict(done, flags={"x": 0.1}), early,
                  dict(early, status="error"), late]
        seen = []
        with unittest.mock.patch.object(
                guild, "_tpe_propose",
                lambda *args, pending, **kw: seen.append(pending) or [0.5]):
            for staged in (True, False):
                guild._tpe_next_flags(space, trials, {
                    "stage_trials": staged, "random_seed": 1})
        self.assertEqual(seen, [{1}, set()])

    @any_start_mode
    def test_refusals(self):
        for args, message in [
                (["-o", "gp"], "optimizer 'gp' is Guild AI's, built on "
                 "scikit-optimize: use -o tpe"),
                (["-o", "forest"], "use -o tpe"),
                (["-o", "gbrt"], "use -o tpe"),
                (["-o", "tpe", "--print-trials"], "tpe proposes each trial "
                 "from the results of the trials before it"),
                (["-o", "tpe", "-Fo", "starts=3"], "unknown optimizer flag "
                 "'starts' for tpe (in-flight, random-starts)"),
                (["-o", "tpe", "-Fo", "in-flight=0"], "in-flight must be a "
                 "whole number of at least 1"),
                (["-o", "tpe", "-Fo", "x"], "expected NAME=VAL"),
                (["-o", "random", "-Fo", "in-flight=2"], "for random: it "
                 "takes none"),
                (["-N", "loss", "-X", "acc"], "cannot be used together"),
                (["-o", "tpe", "-N", "min loss"], "--minimize takes the "
                 "name of a scalar, whose last value judges a trial: 'min "
                 "loss' is not one"),
                (["-o", "tpe", "fail=[]"], "tpe cannot choose from an "
                 "empty list")]:
            with self.subTest(args=args):
                self.assertGuildError(self.guild(
                    "run", "quad.py", "x=[0.0:1.0]", *(args + ["-y"])),
                    message)
        self.assertGuildError(self.guild("run", "quad.py", "-N", "acc",
                                         "-y"), "apply to batches")
        self.assertEqual(self.runs(), [])

    @any_start_mode
    def test_progress_on_a_terminal(self):
        out, err = ProgressTest.run_in_pty(self, [
            "run", "quad.py", "x=[0.0:1.0]", "-O", "-m", "3", "-y"],
            env={"NO_COLOR": "1"})
        self.assertIn("[guild] trial 1/3, no loss yet, 0:00:00 elapsed",
                      err)
        self.assertRegex(err, r"\[guild\] trial 3/3, best loss [0-9.e-]+ "
                         r"\(trial [12]\)")


class QueueTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def stage(self, *flags, gpus=None):
        args = ["run", "say.py", "--stage", "-y"] + list(flags)
        if gpus:
            args += ["--gpus", gpus]
        code, out = self.guild(*args)
        self.assertEqual(code, 0, out)

    def test_wait_for_running_is_the_inverse_of_ignore_running(self):
        # Guild AI 0.7+ spells the flag wait-for-running; queues record
        # and print ignore-running, as the spec shows.
        for flags, ignore in [(["wait-for-running=no"], True),
                              (["wait-for-running=yes"], False),
                              (["wait-for-running=no",
                                "ignore-running=yes"], True)]:
            self.guild("run", "queue", "run-once=yes", "-y", *flags)
            self.assertEqual(self.runs()[0].flags["ignore-running"], ignore)
        self.assertGuildError(self.guild("run", "queue", "-y",
                                         "wait-for-running=no",
                                         "ignore-running=no"),
                              "wait-for-running and ignore-running disagree")
        self.assertEqual(len(self.runs()), 3)

    def test_queue_gpus_match(self):
        self.copy_sample("say.py", project="batch")
        self.stage("msg=any")
        self.stage("msg=one", gpus="1")
        code, out = self.guild("run", "queue", "run-once=yes", "gpus=0",
                               "-y")
        self.assertIn("any\n", out)
        self.assertNotIn("one\n", out)
        code, out = self.guild("run", "queue", "run-once=yes", "gpus=1",
                               "-y")
        self.assertIn("one\n", out)
        self.assertEqual([r.status for r in self.runs()
                          if r.opref.kind != "queue"], ["completed"] * 2)

    def test_queue_waits_for_running_runs(self):
        self.copy_sample("say.py", project="batch")
        self.copy_sample("sleep.py")
        self.stage("msg=queued")
        p = self.start_guild("run", "sleep.py", "seconds=2", "-y")
        code, out = self.guild("run", "queue", "run-once=yes",
                               "poll-interval=1", "-y")
        p.wait()
        self.assertIn("Waiting for running runs", out)
        self.assertIn("queued\n", out)
        sleep_run = [r for r in self.runs() if r.op_desc == "sleep.py"][0]
        say_run = [r for r in self.runs() if r.op_desc == "say.py"][0]
        self.assertGreater(say_run.get("started"), sleep_run.get("stopped"))

    def test_failing_staged_run_is_logged_and_queue_goes_on(self):
        self.copy_sample("fail.py")
        self.guild("run", "fail.py", "--stage", "-y")
        self.guild("run", "fail.py", "code=0", "--stage", "-y")
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertEqual(code, 0)
        self.assertIn("exited with an error (3)", out)
        self.assertIn("failing with 0", out)

    @unittest.skipIf(IS_WINDOWS, "POSIX signals")
    def test_sigterm_stops_queue_and_its_run(self):
        self.copy_sample("sleep.py")
        self.guild("run", "sleep.py", "--stage", "-y")
        p = self.start_guild("run", "queue", "poll-interval=1", "-y")
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        self.assertEqual(sorted((r.op_desc, r.status) for r in self.runs()),
                         [("queue", "terminated"),
                          ("sleep.py", "terminated")])

    def test_several_queues_start_each_run_once(self):
        write(path(self.project, "mark.py"),
              "import os\ni = 0\n"
              "open(os.path.join(os.environ['MARKS'], str(i)), 'a')"
              ".write('x')\n")
        code, out = self.guild("run", "mark.py", "i=[%s]" % ",".join(
            str(i) for i in range(12)), "--stage-trials", "-y")
        self.assertEqual(code, 0, out)
        marks = mkdtemp()
        env = dict(os.environ, GUILD_HOME=self.home, MARKS=marks)
        procs = [subprocess.Popen(
            [sys.executable, GUILD_PY, "run", "queue", "run-once=yes",
             "ignore-running=yes", "-y"], cwd=self.project, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(3)]
        for p in procs:
            self.assertEqual(p.wait(timeout=120), 0)
        self.assertEqual(sorted(os.listdir(marks), key=int),
                         [str(i) for i in range(12)])
        for name in os.listdir(marks):
            with open(path(marks, name)) as f:
                self.assertEqual(f.read(), "x")
        self.assertEqual({r.status for r in self.runs()}, {"completed"})


MARK_SCRIPT = """\
import os, time
i = 0
time.sleep(float(os.environ.get("MARK_SECONDS", "0")))
with open(os.path.join(os.environ["MARKS"], "%s-%s" % (i, os.getpid())),
          "w") as f:
    f.write(os.environ["RUN_ID"])
"""


class QueueScaleTest(GuildTestCase):
    """Many queues, killed queues, stopped runs, lost caches."""
    starts_scripts = True  # also run in the fresh-interpreter pass


    def stage_marks(self, n):
        write(path(self.project, "mark.py"), MARK_SCRIPT)
        code, out = self.guild("run", "mark.py", "i=[%s]" % ",".join(
            str(i) for i in range(n)), "--stage-trials", "-y")
        self.assertEqual(code, 0, out)
        self.marks = mkdtemp()
        self.env = dict(os.environ, GUILD_HOME=self.home, MARKS=self.marks)

    def start_queue(self, *flags):
        return subprocess.Popen(
            [sys.executable, GUILD_PY, "run", "queue", "-y"] + list(flags),
            cwd=self.project, env=self.env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)

    def marks_by_trial(self):
        found = {}
        for name in os.listdir(self.marks):
            found.setdefault(int(name.split("-")[0]), []).append(name)
        return found

    def trials(self):
        return [r for r in self.runs() if r.op_desc == "mark.py"]

    def wait_not_running(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not any(r.status in ("running", "pending")
                       for r in self.trials()):
                return
            time.sleep(0.1)
        self.fail("runs still running")

    @any_start_mode
    def test_eight_queues_start_each_of_400_trials_once(self):
        self.stage_marks(400)
        self.env["MARK_SECONDS"] = "0.01"  # so that the queues overlap
        queues = [self.start_queue("run-once=yes", "ignore-running=yes")
                  for _ in range(8)]
        for q in queues:
            self.assertEqual(q.wait(timeout=600), 0)
        marks = self.marks_by_trial()
        self.assertEqual(sorted(marks), list(range(400)))
        self.assertEqual({len(v) for v in marks.values()}, {1})
        self.assertEqual({r.status for r in self.trials()}, {"completed"})
        self.assertEqual(len(self.trials()), 400)
        starters = {guild._read_json(r.guild_path("proc.json"))["pid"]
                    for r in self.trials()}
        self.assertGreaterEqual(len(starters), 4)  # the queues shared them

    def test_staged_run_claimed_by_dead_process_is_staged_again(self):
        self.stage_marks(1)
        [trial] = self.trials()
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        owner = {"pid": dead.pid, "start": "gone", "host": guild.HOST}
        with guild.Lock(guild.RUN_STATUS, timeout=5):
            self.assertEqual(guild._claim_staged(trial), "staged")
        # Make the claim look like the dead process's.
        guild._write_json(trial.guild_path("PENDING"), owner)
        name = os.listdir(path(self.home, "cache", "index", "claims"))[0]
        guild._write_json(path(self.home, "cache", "index", "claims", name),
                          owner)
        self.assertEqual(trial.status, "staged")
        q = self.start_queue("run-once=yes")
        self.assertEqual(q.wait(timeout=60), 0)
        self.assertEqual(trial.status, "completed")
        self.assertEqual(list(self.marks_by_trial()), [0])

    def test_dead_hosts_claims_and_runs_lapse_after_the_lease(self):
        # Another host's claim and run count as alive while that host
        # beats, or while they are younger than the lease (300 s).
        self.stage_marks(2)
        claimed, started = self.trials()
        with guild.Lock(guild.RUN_STATUS, timeout=5):
            guild._claim_staged(claimed)
            guild._claim_staged(started)
        remote = {"pid": 1, "start": "x", "host": "elsewhere"}
        guild._write_json(claimed.guild_path("PENDING"), remote)
        guild._write_json(started.guild_path("proc.json"),
                          dict(remote, started=guild._timestamp()))
        heartbeat = path(self.home, "hosts", "elsewhere")
        os.makedirs(os.path.dirname(heartbeat), exist_ok=True)
        guild._write_json(heartbeat, {"host": "elsewhere"})
        past = time.time() - 600
        for record in (claimed.guild_path("PENDING"),
                       started.guild_path("proc.json")):
            os.utime(record, (past, past))
        self.assertEqual((claimed.status, started.status),
                         ("pending", "running"))  # the host beats
        os.utime(heartbeat, (past, past))
        self.assertEqual((claimed.status, started.status),
                         ("staged", "error"))  # it has lapsed
        self.assertEqual(guild._status_reason(started),
                         "its host elsewhere has not been heard from for "
                         "over 300 s")
        q = self.start_queue("run-once=yes")
        self.assertEqual(q.wait(timeout=60), 0)
        self.assertEqual((claimed.status, started.status),
                         ("completed", "error"))
        self.assertEqual(list(self.marks_by_trial()),
                         [claimed.flags["i"]])
        ours = path(self.home, "hosts", guild.HOST)  # a host beats as it works
        self.assertGreater(os.stat(ours).st_mtime, time.time() - 60)

    @any_start_mode
    def test_bad_host_lease_is_an_error(self):
        self.stage_marks(1)
        code, out = guild_cmd(["runs"], cwd=self.project, guild_home=self.home,
                              env={"GUILD_HOST_LEASE": "soon"})
        self.assertGuildError((code, out), "GUILD_HOST_LEASE must be a "
                              "number of seconds")

    def test_claim_from_another_host_is_never_restaged(self):
        self.stage_marks(1)
        [trial] = self.trials()
        with guild.Lock(guild.RUN_STATUS, timeout=5):
            guild._claim_staged(trial)
        remote = {"pid": 1, "start": "x", "host": guild.HOST + "-b"}
        guild._write_json(trial.guild_path("PENDING"), remote)
        self.assertEqual(trial.status, "pending")
        q = self.start_queue("run-once=yes")
        self.assertEqual(q.wait(timeout=60), 0)
        self.assertEqual(trial.status, "pending")
        self.assertEqual(self.marks_by_trial(), {})

    @any_start_mode
    def test_lost_or_corrupt_cache_is_rebuilt(self):
        self.stage_marks(6)
        cache = path(self.home, "cache")
        shutil.rmtree(path(cache, "index"))
        write(path(cache, "runs.json"), "{corrupt")
        code, out = self.guild("runs")
        self.assertEqual(out.count(" staged "), 6)
        q = self.start_queue("run-once=yes")
        self.assertEqual(q.wait(timeout=60), 0)
        self.assertEqual(sorted(self.marks_by_trial()), list(range(6)))

    @any_start_mode
    def test_missing_index_entry_is_found_by_verification(self):
        self.stage_marks(3)
        staged_dir = path(self.home, "cache", "index", "staged")
        os.remove(path(staged_dir, sorted(os.listdir(staged_dir))[0]))
        q = self.start_queue("run-once=yes")
        self.assertEqual(q.wait(timeout=60), 0)
        self.assertEqual(sorted(self.marks_by_trial()), [0, 1, 2])

    @any_start_mode
    def test_cache_deleted_while_queues_run(self):
        self.stage_marks(40)
        self.env["MARK_SECONDS"] = "0.1"  # 2 s of trials for two queues
        queues = [self.start_queue("run-once=yes", "ignore-running=yes")
                  for _ in range(2)]
        for _ in range(5):
            time.sleep(0.2)
            shutil.rmtree(path(self.home, "cache"), ignore_errors=True)
        self.assertLess(len(os.listdir(self.marks)), 40)  # deleted mid-way
        for q in queues:
            self.assertEqual(q.wait(timeout=300), 0)
        final = self.start_queue("run-once=yes")
        self.assertEqual(final.wait(timeout=300), 0)
        marks = self.marks_by_trial()
        self.assertEqual(sorted(marks), list(range(40)))
        self.assertEqual({len(v) for v in marks.values()}, {1})
        listed = {r.id: r.status for r in self.runs()}
        for run_id in os.listdir(path(self.home, "runs")):
            self.assertEqual(listed[run_id], guild.run_status(
                path(self.home, "runs", run_id)))

    @any_start_mode
    def test_listing_cache_follows_changes(self):
        self.stage_marks(2)
        self.assertEqual(self.guild("runs")[1].count(" staged "), 2)
        q = self.start_queue("run-once=yes")
        q.wait(timeout=60)
        code, out = self.guild("runs")
        self.assertEqual(out.count("completed"), 4)  # 2 trials, batch, q
        self.guild("runs", "delete", "-y", "1")
        self.assertEqual(len(self.guild("runs")[1].splitlines()), 3)


STORM_SCRIPT = """\
import os, time
i = 0
marks = os.environ["MARKS"]
open(os.path.join(marks, "start-%s-%s" % (i, os.getpid())), "w").close()
time.sleep(float(os.environ.get("MARK_SECONDS", "0")))
open(os.path.join(marks, "end-%s-%s" % (i, os.getpid())), "w").close()
print("loss: %s" % i)
"""
# (its first frame the script's; the interrupt may land deeper, in
# "<frozen codecs>" as open() runs, say)
STORM_CTRL_C = re.compile(r'Traceback \(most recent call last\):\n'
                          r'  File "([^"]*/)?storm\.py".*\n(    .*\n)*'
                          r'(  File ".*\n(    .*\n)*)*'
                          r'KeyboardInterrupt\n')


@unittest.skipIf(IS_WINDOWS, "POSIX signals")
class KillStormTest(GuildTestCase):
    """Queues and trials killed with SIGKILL, SIGTERM and SIGINT, to pids
    and to process groups, at random moments, killed queues restarted: no
    trial starts twice, none is lost or left stuck, no output holds a
    traceback. A few seconds here, in both start modes (the two passes of
    make test); `make stress` runs it longer (GUILD_STRESS_SECONDS,
    GUILD_STRESS_SEED, GUILD_STRESS_TRIALS, GUILD_STRESS_QUEUES)."""
    starts_scripts = True  # also run in the fresh-interpreter pass

    def start_queue(self, n, *flags):
        log = open(path(self.logs, "queue-%d.log" % n), "wb")
        self.addCleanup(log.close)
        queue = subprocess.Popen(
            [sys.executable, GUILD_PY, "run", "queue", "-y",
             "ignore-running=yes"] + list(flags), cwd=self.project,
            env=self.env, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_default_sigint, start_new_session=True)
        queue.log = log.name
        return queue

    def running_trials(self):
        """[(script pid, run id)] of the trials running."""
        pids = []
        for run in self.runs():
            child = guild._read_dict(run.guild_path("proc.json")).get(
                "child")
            if run.op_desc == "storm.py" and isinstance(child, dict) and \
                    run.status == "running":
                pids.append((child["pid"], run.id))
        return pids

    def storm(self, rnd, seconds, queue_count):
        """Kill queues and trials at random for seconds, restarting the
        killed queues; then stop the queues left gently. Returns the
        number of kills and the ids of the trials killed directly."""
        started = [0]

        def queue():
            started[0] += 1
            return self.start_queue(started[0], "poll-interval=0.2")

        queues = [queue() for _ in range(queue_count)]
        deadline = time.monotonic() + seconds
        kills, killed_trials = 0, set()
        while time.monotonic() < deadline:
            time.sleep(rnd.uniform(0.01, 0.25))
            signum = rnd.choice([signal.SIGKILL, signal.SIGTERM,
                                 signal.SIGINT])
            pids = self.running_trials() if rnd.random() < 0.3 else []
            if pids:
                pid, run_id = rnd.choice(pids)
                killed_trials.add(run_id)
            else:
                victim = queues.pop(rnd.randrange(len(queues)))
                pid = victim.pid
                if signum == signal.SIGINT and not cat_file(victim.log):
                    # Ctrl-C as the interpreter itself starts: its own
                    # traceback, before guild's first line runs
                    signum = signal.SIGTERM
            try:
                (os.killpg if rnd.random() < 0.5 else os.kill)(pid, signum)
            except OSError:
                pass
            kills += 1
            if not pids:
                victim.wait(timeout=60)
                queues.append(queue())
        for q in queues:  # gently: they end their runs and stop
            q.send_signal(signal.SIGTERM)
            q.wait(timeout=60)
        return kills, killed_trials

    def test_kill_storm_loses_nothing_and_starts_nothing_twice(self):
        seed = int(os.environ.get("GUILD_STRESS_SEED") or
                   random.randrange(10 ** 6))
        seconds = float(os.environ.get("GUILD_STRESS_SECONDS") or 2)
        n = int(os.environ.get("GUILD_STRESS_TRIALS") or 24)
        rnd = random.Random(seed)
        note = "seed %d (GUILD_STRESS_SEED=%d to repeat)" % (seed, seed)
        write(path(self.project, "storm.py"), STORM_SCRIPT)
        code, out = self.guild("run", "storm.py", "i=range[0:%d]" % (n - 1),
                               "--stage-trials", "-y")
        self.assertEqual(code, 0, out)
        self.marks, self.logs = mkdtemp(), mkdtemp()
        self.env = dict(os.environ, GUILD_HOME=self.home, MARKS=self.marks,
                        MARK_SECONDS="0.05")
        kills, killed_trials = self.storm(rnd, seconds, int(
            os.environ.get("GUILD_STRESS_QUEUES") or 3))
        final = self.start_queue(0, "run-once=yes")
        self.assertEqual(final.wait(timeout=600), 0, note)
        marks = {}
        for name in os.listdir(self.marks):
            kind, i, _pid = name.split("-")
            marks.setdefault((kind, int(i)), []).append(name)
        runs = self.runs()
        trials = [r for r in runs if r.op_desc == "storm.py"]
        self.assertEqual(sorted(r.flags["i"] for r in trials),
                         list(range(n)), note)  # none lost, none unborn
        self.assertEqual([(r.id, r.op_desc) for r in runs if guild._damage(r)],
                         [], note)
        for trial in trials:
            i, status = trial.flags["i"], trial.status
            starts = marks.get(("start", i), [])
            self.assertLessEqual(len(starts), 1, "%s started twice; %s"
                                 % (trial.id, note))
            if status == "completed":
                self.assertEqual(len(marks.get(("end", i), [])), 1, note)
                continue
            self.assertIn(status, ("error", "terminated"), note)
            # Ended without completing: it started (its process recorded
            # itself before its script ran), and it was killed, or its
            # queue was (killed, its script dies with it; stopped, its
            # script is stopped); a stop before the start stages it again.
            child = guild._read_dict(trial.guild_path("proc.json")).get(
                "child")
            self.assertIsInstance(child, dict, "%s %s never started: %s %r; %s"
                                  % (trial.id, status, guild._read_dict(
                                      trial.guild_path("exit.json")),
                                     cat_file(trial.guild_path("output")),
                                     note))
            if status == "error" and trial.id not in killed_trials:
                self.assertIn("died without recording an exit",
                              guild._status_reason(trial), note)
        self.assertLessEqual({r.status for r in runs},
                             {"completed", "error", "terminated"}, note)
        outputs = [path(self.logs, name) for name in os.listdir(self.logs)]
        outputs += [r.guild_path("output") for r in runs]
        for output in outputs:  # a script Ctrl-C'd shows where, as Python
            text = STORM_CTRL_C.sub("", cat_file(output))
            self.assertNotIn("Traceback", text, "%s; %s" % (output, note))
            self.assertNotIn("Exception ignored", text, note)
        if os.environ.get("GUILD_STRESS_SECONDS"):
            restaged = sum(cat_file(path(self.logs, name)).count(
                "stopped before its script started")
                for name in os.listdir(self.logs))
            print("\n%d kills in %.0f s, %d trials: %s, %d staged again "
                  "by a stop before their script started; %s" % (
                      kills, seconds, n, {
                          s: sum(r.status == s for r in trials)
                          for s in sorted({r.status for r in trials})},
                      restaged, note))


# ---------------------------------------------------------------------------
# 11-12. Preemption notices, claims, and Slurm
# ---------------------------------------------------------------------------

# A script that trains in steps from its checkpoint; on USR1 it saves the
# checkpoint and exits, as a script preempted on a cluster should.
CHECKPOINTED = """\
import os, signal, sys, time
steps = 4
step_seconds = 0.01
fail = 0
if fail:
    sys.exit(fail)
ckpt = os.path.join(os.environ["RUN_DIR"], "ckpt")
start = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
notice = []
signal.signal(signal.SIGUSR1, lambda *_: notice.append(1))
print("resuming at", start, "notice by", os.environ.get(
    "GUILD_PREEMPT_SIGNAL"), flush=True)
for step in range(start, steps):
    if notice:
        print("USR1 at step", step, flush=True)
        sys.exit(1)
    print("step", step, flush=True)
    time.sleep(step_seconds)
    with open(ckpt + ".tmp", "w") as f:  # whole, even if killed meanwhile
        f.write(str(step + 1))
    os.replace(ckpt + ".tmp", ckpt)
print("loss: 0.1")
"""


@unittest.skipIf(IS_WINDOWS, "POSIX signals")
class PreemptionTest(GuildTestCase):
    """Queues on USR1, claims without the lock, and the queue side of a
    Slurm task (a submission record written here by hand), no Slurm."""

    starts_scripts = True  # also run in the fresh-interpreter pass

    def stage(self, n=1, **flags):
        write(path(self.project, "train.py"), CHECKPOINTED)
        for _ in range(n):
            guild.create_run("train.py", flags, cwd=self.project,
                             stage=True)

    def notice_queue(self, env=None):
        """Start a queue, send it USR1 once its first run is at step 1;
        return its exit code and output."""
        p = subprocess.Popen(
            [sys.executable, GUILD_PY, "run", "queue", "run-once=yes", "-y"],
            cwd=self.project, env=dict(os.environ, GUILD_HOME=self.home,
                                       **(env or {})),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(p.stdout.close)
        out = b""
        while b"step 1" not in out:
            line = p.stdout.readline()
            self.assertTrue(line, out)
            out += line
        p.send_signal(signal.SIGUSR1)
        out += p.stdout.read()
        return p.wait(timeout=60), out.decode()

    def trials(self):
        return [r for r in self.runs() if r.opref.kind == "script"]

    def test_usr1_restages_the_run_in_place(self):
        self.stage(2, steps=50)
        code, out = self.notice_queue()
        self.assertEqual(code, 0, out)
        self.assertIn("notice by USR1", out)
        self.assertIn("USR1 at step", out)
        self.assertIn("claiming no more runs", out)
        self.assertEqual(sorted(r.status for r in self.trials()),
                         ["staged", "staged"])  # one re-staged, one unclaimed
        interrupted = [r for r in self.trials()
                       if guild._run_attempts(r)][0]
        with open(path(interrupted.dir, "ckpt")) as f:
            ckpt = int(f.read())
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("resuming at %d" % ckpt, out)  # same directory
        self.assertEqual([r.status for r in self.trials()], ["completed"] * 2)
        code, out = self.guild("runs", "info", interrupted.id)
        self.assertIn("attempts: 2 (1 interrupted)", out)
        self.assertIn("1: terminated, preempted (USR1)", out)

    def write_submission(self, sub, run_ids, **record):
        os.makedirs(path(self.home, "slurm", sub))
        write(path(self.home, "slurm", sub, "runs"),
              "".join(i + "\n" for i in run_ids))
        write(path(self.home, "slurm", sub, "submit.json"),
              json.dumps(dict(record, id=sub)))

    def test_submission_limits_runs_and_requeues(self):
        self.stage(3, steps=50)
        ids = sorted(r.id for r in self.trials())
        self.write_submission("sub1", ids[:2], max_requeues=1)
        env = {"GUILD_SLURM_SUBMISSION": "sub1"}
        code, out = self.notice_queue(env)
        self.assertEqual(code, 0, out)
        first = [r for r in self.trials() if guild._run_attempts(r)][0]
        self.assertIn(first.id, ids[:2])
        code, out = self.notice_queue(env)  # the same run: its 2nd notice
        self.assertEqual(code, 0, out)
        self.assertIn("was interrupted 2 times: it stays terminated", out)
        self.assertEqual(first.status, "terminated")
        code, out = self.guild("run", "queue", "run-once=yes", "-y",
                               env=env)
        statuses = {r.id: r.status for r in self.trials()}
        self.assertEqual(statuses[ids[2]], "staged", out)  # not its own
        self.assertEqual(sorted(statuses.values()),
                         ["completed", "staged", "terminated"])

    def test_task_restarted_by_slurm_restages_what_it_left(self):
        self.stage(2, steps=50)
        ids = sorted(r.id for r in self.trials())
        self.write_submission("sub2", ids[:1] + ["0" * 32], per_run=True)
        task = {"SLURM_JOB_ID": "71", "SLURM_ARRAY_JOB_ID": "70",
                "SLURM_ARRAY_TASK_ID": "0", "GUILD_SLURM_SUBMISSION":
                "sub2/0"}
        p = self.start_guild_env(dict(task, SLURM_RESTART_COUNT="0"))
        p.send_signal(signal.SIGTERM)  # as scontrol requeue does
        p.wait(timeout=30)
        run = guild.Run(ids[0], path(self.home, "runs", ids[0]))
        self.assertEqual(run.status, "terminated")
        code, out = self.guild("run", "queue", "run-once=yes", "-y",
                               env=dict(task, SLURM_RESTART_COUNT="1"))
        self.assertEqual(code, 0, out)
        self.assertIn("staged again (requeued by Slurm (70_0)", out)
        self.assertEqual(run.status, "completed", out + cat_file(
            run.guild_path("output")))
        self.assertEqual(len(guild._run_attempts(run)), 1)
        other = guild.Run(ids[1], path(self.home, "runs", ids[1]))
        self.assertEqual(other.status, "staged")  # not this task's run

    def start_guild_env(self, env):
        p = subprocess.Popen(
            [sys.executable, GUILD_PY, "run", "queue", "run-once=yes", "-y"],
            cwd=self.project, env=dict(os.environ, GUILD_HOME=self.home,
                                       **env),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(p.stdout.close)
        while b"step 1" not in p.stdout.readline():
            self.assertIsNone(p.poll())
        return p

    def test_invisible_store_is_a_clear_error(self):
        code, out = self.guild("run", "queue", "run-once=yes", "-y", env={
            "GUILD_SLURM_SUBMISSION": "gone"})
        self.assertEqual(code, 3, out)
        self.assertGuildError((code, out), "is not visible from")
        self.assertFalse(os.path.exists(path(self.home, "runs")))

    def test_claims_hold_without_the_lock(self):
        # Filesystems such as Lustre with localflock hold a lock on one
        # machine only: processes that do not share it still claim each
        # run once, by creating its PENDING file with a link.
        self.stage(30)
        runs = self.trials()
        gate_r, gate_w = os.pipe()  # closed: all claim at once
        done_r, done_w = os.pipe()  # closed: all may exit (claims die)
        claimers = []
        for _ in range(4):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                try:
                    os.close(r)
                    os.close(gate_w)
                    os.close(done_w)
                    os.read(gate_r, 1)
                    mine = [run.id for run in runs
                            if guild._claim_staged(run) == "staged"]
                    os.write(w, (json.dumps(mine) + "\n").encode())
                    os.read(done_r, 1)
                finally:
                    os._exit(0)
            os.close(w)
            claimers.append((pid, os.fdopen(r)))
        os.close(gate_w)
        claimed = []
        for _pid, f in claimers:
            claimed += json.loads(f.readline())
            f.close()
        os.close(done_w)
        for pid, _f in claimers:
            os.waitpid(pid, 0)
        os.close(gate_r)
        os.close(done_r)
        self.assertEqual(sorted(claimed), sorted(r.id for r in runs))


class SlurmScriptTest(GuildTestCase):
    """What `guild slurm submit --dry-run` would submit: no Slurm needed."""

    def stage(self, n):
        write(path(self.project, "train.py"), CHECKPOINTED)
        for _ in range(n):
            guild.create_run("train.py", cwd=self.project, stage=True)

    def dry_run(self, *args):
        code, out = self.guild("slurm", "submit", "--dry-run",
                               "--max-array-size", "1001", *args)
        self.assertEqual(code, 0, out)
        return out

    def test_job_script(self):
        self.stage(3)
        out = self.dry_run(
            "--workers", "8", "--time", "1:00:00", "--signal-before", "300",
            "--partition", "gpu", "--gpus-per-task", "1", "--mem", "8G",
            "--cpus-per-task", "4", "--account", "lab", "--qos", "high",
            "--dependency", "afterok:12", "--sbatch-arg=--constraint=a100",
            "--setup", "module load python/3.11", "--python", "/opt/py3")
        self.assertEqual(out.count("#!/bin/bash"), 1)
        for line in ("#SBATCH --array=0-2", "#SBATCH --requeue",
                     "#SBATCH --signal=B:USR1@300", "#SBATCH --time=1:00:00",
                     "#SBATCH --partition=gpu", "#SBATCH --gpus-per-task=1",
                     "#SBATCH --mem=8G", "#SBATCH --cpus-per-task=4",
                     "#SBATCH --account=lab", "#SBATCH --qos=high",
                     "#SBATCH --dependency=afterok:12",
                     "#SBATCH --constraint=a100", "#SBATCH --open-mode=append",
                     "export GUILD_HOME=%s" % self.home,
                     "module load python/3.11",
                     "exec /opt/py3 %s run queue run-once=yes "
                     "ignore-running=yes -y" % GUILD_PY):
            self.assertIn(line + "\n", out)
        self.assertIn("3 workers pulling 3 runs", out)  # no idle workers
        self.assertRegex(out, r"#SBATCH --output=%s/slurm/\w+/%%A_%%a.out"
                         % re.escape(self.home))
        self.assertFalse(os.path.exists(path(self.home, "slurm")))

    def test_arrays_split_below_max_array_size(self):
        self.stage(5)
        out = self.dry_run("--per-run", "--max-array-size", "3",
                           "--max-running", "2")
        self.assertEqual(re.findall(r"--array=(\S+)", out),
                         ["0-1%2", "0-1%2", "0-0%2"])
        self.assertEqual(re.findall(r"GUILD_SLURM_SUBMISSION=\w+/(\d+)",
                                    out), ["0", "2", "4"])
        self.assertEqual(out.count("--dependency=afterany:"), 2)  # K in all
        out = self.dry_run("--max-array-size", "3", "--workers", "9")
        self.assertEqual(re.findall(r"--array=(\S+)", out), ["0-1"])

    def test_selection(self):
        self.stage(2)
        code, out = self.guild("run", "train.py", "steps=[1,2,3]",
                               "--stage-trials", "-y")
        self.assertEqual(code, 0, out)
        batch = [r for r in self.runs() if r.opref.kind == "batch"][0]
        out = self.dry_run("--batch", batch.id, "--per-run")
        self.assertIn("#SBATCH --array=0-2\n", out)
        out = self.dry_run(batch.id)
        self.assertIn("3 workers pulling 3 runs", out)
        out = self.dry_run()
        self.assertIn("4 workers pulling 5 runs", out)
        code, out = self.guild("slurm", "submit", "-Fo", "nothing.py")
        self.assertEqual((code, out), (0, "Nothing to submit: no staged "
                                       "runs selected\n"))

    def test_no_slurm_is_a_clear_error(self):
        self.stage(1)
        env = {"PATH": os.path.dirname(sys.executable)}
        code, out = self.guild("slurm", "submit", "-y", env=env)
        self.assertGuildError((code, out), "sbatch not found: install "
                              "Slurm's client commands")
        code, out = self.guild("slurm", "status", env=env)
        self.assertEqual((code, out), (0, "No Slurm submissions in %s\n"
                                       % self.home))
        code, out = self.guild("slurm", "check", env=env)
        self.assertEqual(code, 1, out)
        self.assertIn("error:  sbatch not found", out)


def _slurm_answers():
    """True if sbatch is here and a cluster answers with a usable node."""
    if not shutil.which("sbatch"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], timeout=10,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             check=True).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return False
    return any(state.rstrip("*") in ("idle", "mixed", "allocated",
                                      "completing")
               and not state.endswith("*") for state in out.split())


SLURM_SETUP = ("apt-get install slurmctld slurmd slurm-client munge, then "
               "as root SLURM_BASE=/tmp/slurm samples/ci/slurm-start.sh; "
               "or set GUILD_REQUIRE_SLURM=1 to fail here instead")


@unittest.skipIf(IS_WINDOWS, "Slurm runs on Linux")
class SlurmTest(GuildTestCase):
    """Submissions on a real Slurm cluster (one node is enough: see
    README, Clusters). Skipped when none answers."""

    starts_scripts = True  # also run in the fresh-interpreter pass

    def setUp(self):
        require("slurm", _slurm_answers(), SLURM_SETUP)
        super().setUp()
        self.addCleanup(self.cancel_jobs)

    def cancel_jobs(self):
        jobs = [str(a["job"]) for sub in guild._submission_ids()
                for a in (guild._read_json(path(
                    self.home, "slurm", sub, "submit.json")) or {}).get(
                        "arrays", ()) if a.get("job")]
        if jobs:
            subprocess.run(["scancel"] + jobs, check=False)
            self.wait_for(lambda: not self.active(jobs), timeout=30)

    def active(self, jobs):
        tasks = guild._slurm_tasks(jobs)
        return [t for job in jobs for t in tasks.get(str(job), ())
                if t[1] in guild.ACTIVE_SLURM_STATES]

    def stage(self, n, script=CHECKPOINTED, **flags):
        write(path(self.project, "train.py"), script)
        return [guild.create_run("train.py", flags, cwd=self.project,
                                 stage=True).id for _ in range(n)]

    def submit(self, *args):
        code, out = self.guild("slurm", "submit", "-y", *args)
        self.assertEqual(code, 0, out)
        job = re.search(r"as Slurm jobs? (\d+)", out).group(1)
        return job, out

    def run_of(self, run_id):
        return guild.Run(run_id, path(self.home, "runs", run_id))

    def starts(self):
        """{run id: times a queue started it}, from the task logs."""
        counts = {}
        for sub in guild._submission_ids():
            for name in os.listdir(path(self.home, "slurm", sub)):
                if name.endswith(".out"):
                    with open(path(self.home, "slurm", sub, name)) as f:
                        for run_id in re.findall(
                                r"Starting staged run (\w+)", f.read()):
                            counts[run_id] = counts.get(run_id, 0) + 1
        return counts

    def logs(self):
        """The task logs and Slurm's view, for failure messages."""
        code, out = self.guild("slurm", "logs")
        return out + self.guild("slurm", "status")[1]

    def assertStatuses(self, ids, statuses):
        self.assertEqual([self.run_of(i).status for i in ids], statuses,
                         self.logs())

    def running_in_slurm(self, run_id):
        proc = guild._read_json(path(self.home, "runs", run_id, ".guild",
                                     "proc.json")) or {}
        return proc.get("slurm") and self.run_of(run_id).status == "running"

    @any_start_mode
    def test_pull_workers_start_each_run_once(self):
        ids = self.stage(19, steps=1) + self.stage(1, fail=3)
        code, out = self.guild("slurm", "submit", "-y", "--workers", "4",
                               "--wait")
        self.assertEqual(code, 1, out)
        self.assertIn("runs: 19 completed, 1 error", out)
        self.assertIn("guild: not every run completed (error)", out)
        self.assertEqual(self.starts(), {i: 1 for i in ids})
        self.assertEqual(sorted(r.status for r in self.runs()),
                         ["completed"] * 23 + ["error"])  # and 4 queues
        code, out = self.guild("slurm", "status")
        self.assertIn("4 pull workers, 20 runs", out)
        code, out = self.guild("slurm", "logs")
        self.assertEqual(out.count("==> "), 4)

    @any_start_mode
    def test_workers_take_the_trials_a_tpe_batch_stages_later(self):
        # The batch runs here, in the background, staging 2 trials at a
        # time as results come in; the submission of its first trials
        # records it, so its 2 workers run all 6 and end with it.
        write(path(self.project, "quad.py"), TPE_SCRIPT)
        code, out = self.guild("run", "quad.py", "x=[0.0:1.0]", "fail=2",
                               "-o", "tpe", "-m", "6", "--stage-trials",
                               "-Fo", "in-flight=2", "-Fo", "random-starts=2",
                               "-b", "-y")
        self.assertEqual(code, 0, out)
        batch = self.run_of(re.search(r"Started (\w+)", out).group(1))
        self.wait_for(lambda: len([r for r in self.runs()
                                   if r.status == "staged"]) == 2,
                      what="2 staged trials")
        code, out = self.guild("slurm", "submit", "--workers", "2",
                               "--wait", "-y")
        self.assertEqual(code, 0, out + self.logs())
        self.assertEqual(batch.status, "completed", self.logs())
        trials = [r for r in self.runs() if r.op_desc == "quad.py"]
        self.assertEqual([r.status for r in trials], ["completed"] * 6)
        self.assertEqual(self.starts(), {r.id: 1 for r in trials})
        # Its status counts the trials staged after the submission too.
        code, out = self.guild("slurm", "status")
        self.assertIn("2 pull workers, 6 runs (with the trials batch %s "
                      "staged later)" % batch.short_id, out)
        self.assertIn("runs: 6 completed", out)

    @any_start_mode
    def test_per_run_skips_a_run_started_elsewhere(self):
        ids = self.stage(3, steps=1)
        job, _ = self.submit("--per-run", "--sbatch-arg=--hold")
        code, out = self.guild("run", "--start", ids[1], "-y")
        self.assertEqual(code, 0, out)
        subprocess.run(["scontrol", "release", job], check=True)
        self.wait_for(lambda: not self.active([job]), what="the array")
        self.assertEqual(self.starts(), {ids[0]: 1, ids[2]: 1})
        self.assertStatuses(ids, ["completed"] * 3)
        code, out = self.guild("slurm", "logs", job + "_1")
        self.assertEqual(code, 0, out)
        self.assertNotIn("Starting staged run", out)

    def restart_now(self, task):
        """Start a requeued task at once, not after Slurm's hold."""
        self.wait_for(lambda: [t for t in guild._slurm_tasks(
            [task.split("_")[0]]).get(task.split("_")[0], ())
            if t[0] == task.split("_")[1] and t[1] == "PENDING"],
            what="task %s to be requeued" % task)
        # slurmd revokes the task's credential at a time in whole
        # seconds: a launch in that same second fails ("Job credential
        # revoked"), which is what Slurm's own hold of a requeued task
        # (about 120 s) prevents.
        time.sleep(1.05 - time.time() % 1)
        subprocess.run(["scontrol", "update", "JobId=" + task,
                        "StartTime=now"], check=True)

    def test_requeued_task_restages_its_run(self):
        ids = self.stage(3, steps=30, step_seconds=0.02)
        job, _ = self.submit("--workers", "1")
        busy = self.wait_for(lambda: [i for i in ids
                                      if self.running_in_slurm(i)],
                             what="a run to start")[0]
        subprocess.run(["scontrol", "requeue", job + "_0"], check=True)
        self.restart_now(job + "_0")
        self.wait_for(lambda: not self.active([job]), what="the array")
        self.assertStatuses(ids, ["completed"] * 3)
        attempts = {i: len(guild._run_attempts(self.run_of(i))) for i in ids}
        self.assertEqual(attempts, {i: int(i == busy) for i in ids})
        # Never more starts than attempts: the scripts' own count (it
        # misses a start killed before the script printed) and the
        # queues' (which counts a start stopped before it was recorded,
        # whose run the next task starts).
        attempts = {i: 1 + int(i == busy) for i in ids}
        ran = {i: cat_file(path(self.home, "runs", i, ".guild", "output"))
               .count("resuming at") for i in ids}
        logged = self.starts()
        for i in ids:
            self.assertLessEqual(ran[i], attempts[i], self.logs())
            self.assertGreaterEqual(logged[i], attempts[i], self.logs())
        code, out = self.guild("runs", "info", busy)
        self.assertIn("attempts: 2 (1 interrupted)", out)
        self.assertIn("requeued by Slurm (%s_0)" % job, out)

    def test_usr1_notice_restages_and_requeues(self):
        ids = self.stage(2, steps=50, step_seconds=0.02)
        job, _ = self.submit("--workers", "1")
        busy = self.wait_for(lambda: [i for i in ids
                                      if self.running_in_slurm(i)],
                             what="a run to start")[0]
        self.wait_for(lambda: "step 1\n" in cat_file(path(
            self.home, "runs", busy, ".guild", "output")),
            what="its handler for USR1")
        subprocess.run(["scancel", "--batch", "--signal=USR1",
                        job + "_0"], check=True)
        self.restart_now(job + "_0")  # the task requeued itself
        self.wait_for(lambda: not self.active([job]), what="the array")
        self.assertStatuses(ids, ["completed"] * 2)
        self.assertEqual(len(guild._run_attempts(self.run_of(busy))), 1)
        code, out = self.guild("cat", "--output", busy)
        self.assertIn("USR1 at step", out)
        self.assertRegex(out, r"resuming at [1-9]")
        code, out = self.guild("slurm", "logs", job + "_0")
        self.assertIn("Requeued Slurm task %s_0" % job, out)

    def test_scancel_leaves_runs_terminated(self):
        ids = self.stage(2, steps=200, step_seconds=0.05)
        job, _ = self.submit("--workers", "1")
        busy = self.wait_for(lambda: [i for i in ids
                                      if self.running_in_slurm(i)],
                             what="a run to start")[0]
        code, out = self.guild("slurm", "cancel", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("Cancelled Slurm job %s" % job, out)
        self.wait_for(lambda: not self.active([job]), what="the array")
        self.wait_for(lambda: self.run_of(busy).status == "terminated",
                      timeout=10, what="the run to end")
        self.assertEqual(guild._run_attempts(self.run_of(busy)), [])
        other = [i for i in ids if i != busy][0]
        self.assertEqual(self.run_of(other).status, "staged", self.logs())

    @any_start_mode
    def test_store_not_visible_from_the_task(self):
        self.stage(1, steps=1)
        logs = mkdtemp()
        job, _ = self.submit("--sbatch-arg=--hold", "--sbatch-arg=--output="
                             + path(logs, "%A_%a.out"))
        moved = self.home + ".moved"
        os.rename(self.home, moved)
        try:
            subprocess.run(["scontrol", "release", job], check=True)
            self.wait_for(lambda: not self.active([job]), what="the task")
            with open(path(logs, job + "_0.out")) as f:
                out = f.read()
            self.assertFalse(os.path.exists(self.home))  # nothing written
        finally:
            os.rename(moved, self.home)
        self.assertIn("guild: the run store %s is not visible from"
                      % self.home, out)
        self.assertNotIn("Traceback", out)
        show = subprocess.run(["scontrol", "show", "job", job],
                              stdout=subprocess.PIPE, check=True)
        self.assertIn(b"ExitCode=3:0", show.stdout)


@unittest.skipIf(IS_WINDOWS, "POSIX signals")
class StopTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def start_sleep(self, *args):
        return self.start_guild("run", "-y", *args)

    @any_start_mode
    def test_stop_before_the_script_starts_stages_the_run_again(self):
        write(path(self.project, "ok.py"), OK_SCRIPT)
        self.chdir(self.project)
        self.assertEqual(guild_main("run", "ok.py", "--stage", "-y")[0], 0)
        [run] = guild.list_runs()

        def stopped(*_args):  # a SIGTERM as the script's process starts
            raise guild._StopRequested(signal.SIGTERM)

        start = guild._start_script_process
        guild._start_script_process = stopped
        self.addCleanup(setattr, guild, "_start_script_process", start)
        with guild.Lock(guild.RUN_STATUS):
            self.assertEqual(guild._claim_staged(run), "staged")
        with self.assertRaises(guild._StopRequested):
            guild._start_run(run)
        self.assertEqual(run.status, "staged")
        self.assertFalse(os.path.exists(run.guild_path("exit.json")))
        guild._start_script_process = start
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertEqual(code, 0, out)
        self.assertEqual(run.status, "completed")

    def test_queue_stopped_as_its_script_starts_stages_the_run_again(self):
        # The script's process is held before it records itself (its
        # script is a FIFO it waits to read, as a slow start would wait):
        # a SIGTERM to the queue then ends that process, and the run is
        # staged again, never having run.
        write(path(self.project, "ok.py"), OK_SCRIPT)
        code, out = self.guild("run", "ok.py", "--stage", "-y")
        self.assertEqual(code, 0, out)
        [run] = self.runs()
        script = path(run.dir, "ok.py")
        os.remove(script)
        os.mkfifo(script)
        queue = subprocess.Popen(
            [sys.executable, GUILD_PY, "run", "queue", "run-once=yes",
             "-y"], cwd=self.project, env=dict(os.environ,
                                               GUILD_HOME=self.home),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(queue.stdout.close)
        self.wait_for(lambda: run.status != "staged", what="the claim")
        time.sleep(0.2)  # its script's process waits for the FIFO
        queue.send_signal(signal.SIGTERM)
        out = queue.communicate(timeout=60)[0].decode()
        self.assertEqual(queue.returncode, 128 + signal.SIGTERM, out)
        self.assertEqual(run.status, "staged")
        self.assertIn("stopped before its script started", out)
        self.assertNotIn("Traceback", out)
        for name in ("proc.json", "exit.json", "PENDING"):
            self.assertFalse(os.path.exists(run.guild_path(name)), name)
        self.assertEqual(cat_file(run.guild_path("output")), "")
        os.remove(script)
        write(script, OK_SCRIPT)
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertEqual((code, run.status), (0, "completed"), out)

    def stop_as_the_script_starts(self, *args, env=None):
        """Run `guild ARGS` in the foreground and SIGTERM it while its
        script's process is held before recording itself; return guild's
        (exit code, output)."""
        p = subprocess.Popen(
            [sys.executable, GUILD_PY] + list(args), cwd=self.project,
            env=dict(os.environ, GUILD_HOME=self.home, **(env or {})),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(p.stdout.close)
        self.wait_for(lambda: [r for r in self.runs()
                               if r.status == "pending"],
                      what="the run's start")
        time.sleep(0.3)  # its script's process is held
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=60)[0].decode()
        self.assertNotIn("Traceback", out)
        return p.returncode, out

    @any_start_mode
    def test_foreground_start_stopped_as_its_script_starts(self):
        # `run --start` of a staged run, stopped while the script's
        # process waits to read its script (a FIFO, as a slow start would
        # wait): the run is staged again, never having run.
        write(path(self.project, "ok.py"), OK_SCRIPT)
        self.assertEqual(self.guild("run", "ok.py", "--stage", "-y")[0], 0)
        [run] = self.runs()
        script = path(run.dir, "ok.py")
        os.remove(script)
        os.mkfifo(script)
        code, out = self.stop_as_the_script_starts("run", "--start",
                                                   run.id, "-y")
        self.assertEqual(code, 128 + signal.SIGTERM, out)
        self.assertIn("stopped before its script started", out)
        self.assertEqual(run.status, "staged")
        self.assertEqual(cat_file(run.guild_path("output")), "")
        os.remove(script)
        write(script, OK_SCRIPT)
        code, out = self.guild("run", "--start", run.id, "-y")
        self.assertEqual((code, run.status), (0, "completed"), out)

    @any_start_mode
    def test_new_run_stopped_as_its_script_starts(self):
        # A new run (not staged) stopped before its script ran ends
        # terminated, not pending or running: its script's process is a
        # fresh interpreter held by a sitecustomize module.
        site = mkdtemp()
        write(path(site, "sitecustomize.py"),
              "import os, time\nif %r in os.environ:\n    time.sleep(60)\n"
              % guild.RECORD_ENV)
        write(path(self.project, "ok.py"), OK_SCRIPT)
        code, out = self.stop_as_the_script_starts(
            "run", "ok.py", "-y", env={"GUILD_NO_FORK": "1",
                                       "PYTHONPATH": site})
        self.assertEqual(code, 128 + signal.SIGTERM, out)
        [run] = self.runs()
        self.assertEqual(run.status, "terminated")
        self.assertNotIn("loss", cat_file(run.guild_path("output")))
        self.assertEqual(run.scalars(), {})

    def test_stop_run(self):
        self.copy_sample("sleep.py")
        p = self.start_sleep("sleep.py")
        code, out = self.guild("stop", "1", "-y")
        self.assertIn("Stopping", out)
        self.assertEqual(p.wait(timeout=30), 128 + signal.SIGTERM)
        self.assertEqual(self.runs()[0].status, "terminated")

    def test_runs_stop_asks_first(self):
        self.copy_sample("sleep.py")
        p = self.start_sleep("sleep.py")
        code, out = self.guild("runs", "stop", input="n\n")
        self.assertIn("You are about to stop the following runs:", out)
        self.assertEqual(self.runs()[0].status, "running")
        code, out = self.guild("runs", "stop", input="y\n")
        p.wait(timeout=30)
        self.assertEqual(self.runs()[0].status, "terminated")
        self.assertEqual(self.guild("stop", "-y"), (0, "Nothing to stop\n"))

    def test_stop_without_run_stops_the_newest_running_run_only(self):
        self.copy_sample("sleep.py")
        first = self.start_sleep("sleep.py")
        second = self.start_sleep("sleep.py")
        self.guild("run", "sleep.py", "--stage", "-y")  # newest, not running
        code, out = self.guild("stop", "-y")
        self.assertEqual(second.wait(timeout=30), 128 + signal.SIGTERM)
        self.assertEqual([r.status for r in self.runs()],
                         ["staged", "terminated", "running"])
        self.guild("stop", ":", "-y")
        first.wait(timeout=30)
        self.assertEqual(self.runs()[2].status, "terminated")

    def test_stop_queue_stops_its_run_then_the_queue(self):
        self.copy_sample("sleep.py")
        self.guild("run", "sleep.py", "--stage", "-y")
        self.guild("run", "sleep.py", "--stage", "-y")
        p = self.start_sleep("queue")
        queue = [r for r in self.runs() if r.op_desc == "queue"][0]
        code, out = self.guild("stop", queue.id, "-y")
        p.wait(timeout=30)
        self.assertEqual(sorted(r.status for r in self.runs()),
                         ["staged", "terminated", "terminated"])

    def test_orphaned_script_stopped_is_terminated(self):
        # Where a script outlives its killed watcher (not Linux, whose
        # kernel kills it too: see RunTest), stop ends it terminated.
        self.copy_sample("sleep.py")
        p = self.start_sleep("sleep.py")
        run = self.runs()[0]
        if sys.platform.startswith("linux"):
            script = guild._read_json(run.guild_path("proc.json"))["child"]
            p.kill()
            p.wait()
            for _ in range(200):
                if guild._proc_token(script["pid"]) is None:
                    break
                time.sleep(0.02)
            self.assertEqual(run.status, "error")
            return
        p.kill()
        p.wait()
        self.assertEqual(run.status, "running")
        self.guild("stop", "-y")
        self.assertEqual(run.status, "terminated")

    def test_run_on_another_host_is_not_signalled(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "-y")
        run = self.runs()[0]
        os.remove(run.guild_path("exit.json"))
        guild._write_json(run.guild_path("proc.json"), {
            "pid": os.getpid(), "start": "x", "host": guild.HOST + "-b",
            "started": 1})
        self.assertEqual(run.status, "running")
        self.assertGuildError(self.guild("stop", "-y"),
                              "runs on host %s-b: stop it there" % guild.HOST)

    def test_background_run_and_watch(self):
        write(path(self.project, "bg.py"), "import os, time\n"
              "print('started', flush=True)\n"
              "while not os.path.exists(os.path.join(%r, 'go')):\n"
              "    time.sleep(0.01)\nprint('loss: 1')\n" % self.project)
        code, out = self.guild("run", "bg.py", "-b", "-y")
        self.assertEqual(code, 0, out)
        run = self.runs()[0]
        self.assertEqual(out, "Started %s in the background (guild watch "
                         "%s follows it)\n" % (run.id, run.short_id))
        deadline = time.monotonic() + 30
        while run.status != "running" or "started" not in self.guild(
                "cat", "-O")[1]:
            self.assertLess(time.monotonic(), deadline, run.status)
            time.sleep(0.01)
        if not IS_WINDOWS:  # its own session: not this terminal's
            pid = guild._read_json(run.guild_path("proc.json"))["pid"]
            self.assertNotEqual(os.getsid(pid), os.getsid(0))
        watcher = self.start_guild("watch", until=b"started")
        write(path(self.project, "go"), "")
        rest = watcher.stdout.read().decode()
        self.assertEqual(watcher.wait(timeout=30), 0)
        self.assertIn("loss: 1\nRun %s completed" % run.short_id, rest)
        self.assertEqual(run.status, "completed")
        self.assertEqual(self.guild("watch", "1")[1].splitlines()[1:],
                         ["started", "loss: 1",
                          "Run %s completed" % run.short_id])
        self.assertGuildError(self.guild("watch"), "no running run")
        self.assertGuildError(self.guild("watch", "--pid", "999999999"),
                              "no run has process 999999999")

    def test_ctrl_c_in_watch_leaves_the_run_running(self):
        self.copy_sample("sleep.py")
        self.guild("run", "sleep.py", "-b", "-y")
        run = self.runs()[0]
        deadline = time.monotonic() + 30
        while "sleeping" not in self.guild("cat", "-O")[1]:
            self.assertLess(time.monotonic(), deadline)
            time.sleep(0.01)
        pid_file = path(self.project, "pid")
        write(pid_file, "%d\n" % guild._read_json(
            run.guild_path("proc.json"))["pid"])
        watcher = self.start_guild("watch", "--pid", pid_file)
        watcher.send_signal(signal.SIGINT)
        self.assertEqual(watcher.wait(timeout=30), 0)
        self.assertEqual(run.status, "running")
        self.guild("stop", "-y")
        self.assertEqual(run.status, "terminated")

    def test_script_killed_is_error(self):
        self.copy_sample("sleep.py")
        p = self.start_sleep("sleep.py")
        run = self.runs()[0]
        child = guild._read_json(run.guild_path("proc.json"))["child"]
        os.kill(child["pid"], signal.SIGKILL)
        p.wait(timeout=30)
        self.assertEqual(run.status, "error")
        self.assertEqual(run.get("exit_status"), -signal.SIGKILL)


class ScalarTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def test_parser(self):
        p = guild.parse_scalar_line
        self.assertEqual(p("loss: 0.31"), ("loss", 0.31))
        self.assertEqual(p("loss: -2"), ("loss", -2.0))
        self.assertEqual(p("lr: 1e-3"), ("lr", 0.001))
        self.assertEqual(p("lr: -1.5E+2"), ("lr", -150.0))
        self.assertEqual(p("  acc: .5  "), ("acc", 0.5))
        self.assertEqual(p("val/loss: 3"), ("val/loss", 3.0))
        key, val = p("x: nan")
        self.assertTrue(val != val)
        self.assertEqual(p("x: -inf"), ("x", float("-inf")))
        self.assertEqual(p("x: Infinity"), ("x", float("inf")))
        # Guild AI's patterns: any key without spaces, a note in brackets.
        self.assertEqual(p("acc@5: 0.8"), ("acc@5", 0.8))
        self.assertEqual(p("a-b.c_d: 2"), ("a-b.c_d", 2.0))
        self.assertEqual(p("INFO:root:loss: 4"), ("INFO:root:loss", 4.0))
        self.assertEqual(p("http://host: 1"), ("http://host", 1.0))
        self.assertEqual(p("loss: 0.31 (best)"), ("loss", 0.31))
        self.assertEqual(p("loss: 0.3 (step 7)"), ("loss", 0.3))
        self.assertEqual(p("loss:\t5."), ("loss", 5.0))
        self.assertEqual(p("bar 10%|#  \rloss: 2\r\n"), ("loss", 2.0))
        for line in ["Epoch 1: loss 0.3", "time: 12:30", "version: 1.2.3",
                     "loss:0.31", "loss: ", "loss: abc", "- loss: 1",
                     "loss: 1 2", "", "loss: 0x10", "loss: nanny",
                     "loss: 0.3 extra", "loss: 1-2", "loss: 1_000",
                     ": 1", "loss: 0.3 (step 7) x"]:
            with self.subTest(line=line):
                self.assertIsNone(p(line))

    def test_step_notes(self):
        s = guild._scalar_line
        self.assertEqual(s("loss: 0.3 (step 7)"), ("loss", 0.3, 7))
        self.assertEqual(s("loss: 0.3 (7)"), ("loss", 0.3, 7))
        self.assertEqual(s("loss: 0.3 (step x)"), ("loss", 0.3, None))
        # As in Guild AI, a step note counts even where the line is not
        # a scalar as a whole.
        self.assertEqual(s("Epoch 3 loss: 0.3 (step 9)"), (None, None, 9))
        self.assertEqual(s("Epoch 3"), (None, None, None))

    def test_recorder_splits_lines_across_chunks_and_steps(self):
        target = path(self.project, "scalars")
        rec = guild._ScalarRecorder(target)
        for chunk in [b"lo", b"ss: 1\nstep: 2\nl", b"oss: 0.5\n\xc3",
                      b"\xa9t\xc3\xa9: 3\nacc: 0.9"]:
            rec.feed(chunk)
        rec.close()
        with open(target, encoding="utf-8") as f:
            records = [json.loads(line)[:3] for line in f]
        # The UTF-8 character split across chunks decodes whole.
        self.assertEqual(records, [["loss", 1.0, 0], ["loss", 0.5, 2],
                                   ["\u00e9t\u00e9", 3.0, 2],
                                   ["acc", 0.9, 2]])

    def test_overlong_lines_are_skipped(self):
        target = path(self.project, "scalars")
        rec = guild._ScalarRecorder(target)
        rec.feed(b"x" * 5000)
        rec.feed(b"y" * 5000 + b" loss: 9\nloss: 1\n")
        rec.feed(b"z" * 5000 + b"\nacc: 2")
        rec.close()
        with open(target) as f:
            self.assertEqual([json.loads(line)[:2] for line in f],
                             [["loss", 1.0], ["acc", 2.0]])

    @any_start_mode
    def test_stderr_spans_wait_for_a_write_under_way(self):
        os.makedirs(path(self.project, ".guild"))
        notes = path(self.project, ".guild", "output.stderr")
        write(notes, "1 b\n")  # an earlier process's: past
        got = []
        spans = guild._StderrSpans(self.project, 10, lambda data, pid:
                                   got.append((pid, data)))

        def step(notes_text, data):
            with open(notes, "a") as f:
                f.write(notes_text)
            spans.feed(data)
            return [(pid and pid.decode(), data.decode())
                    for pid, data in got]
        # Writer 7 begins, its bytes are not yet read: "out" may be
        # followed by them, or be them.
        self.assertEqual(step("7 b\n", b"out"), [])
        # Its bytes are 13..16; writer 8 begins after 13.
        self.assertEqual(step("7 e 13 16\n8 b\n", b"ERRout"),
                         [(None, "out")])
        self.assertEqual(step("8 e 19 2", b"ERR"), [(None, "out")])
        self.assertEqual(step("2\n", b"after"), [
            (None, "out"), ("7", "ERR"), (None, "out"), ("8", "ERR"),
            (None, "after")])
        # A writer killed in a write: its bytes are passed on at close.
        step("8 b\n", b"last")
        self.assertEqual(len(got), 5)
        spans.close()
        self.assertEqual(got[5:], [(None, b"last")])

    def test_stats(self):
        stats = guild.scalar_stats([("a", 2.0, 0, 0), ("a", 1.0, 1, 0),
                                    ("a", 3.0, 2, 0), ("b", 5.0, 0, 0)])
        self.assertEqual(stats["a"], {"last": 3.0, "min": 1.0, "max": 3.0,
                                      "step": 2, "count": 3, "time": 0})
        self.assertEqual(stats["b"]["last"], 5.0)

    def test_guild_ai_output_patterns_through_cli(self):
        # The lines Guild AI 0.9.0 records, and those it ignores.
        write(path(self.project, "report.py"), "\n".join([
            "print('loss: 0.3 (step 7)')", "print('acc@5: 0.8')",
            "print('val/loss: 0.1')", "print('a-b.c: 2')",
            "print('x: 1.0E-04')", "print('  indented: 3')",
            "print('nan_val: nan')", "print('ignored: 0.5 extra')",
            "print('ignored2: 1-2')", "print('ignored3:5')",
            "print('Epoch 3 t: 0.3 (step 9)')", "print('after: 1')",
            "print('note: 0.5 (best)')", ""]))
        code, out = self.guild("run", "report.py", "-y")
        self.assertEqual(code, 0, out)
        code, out = self.guild("runs", "info")
        self.assertEqual(out.split("scalars:\n")[1].splitlines(), [
            "  a-b.c: 2 (step 7)", "  acc@5: 0.8 (step 7)",
            "  after: 1 (step 9)", "  indented: 3 (step 7)",
            "  loss: 0.3 (step 7)", "  nan_val: nan (step 7)",
            "  note: 0.5 (step 9)", "  val/loss: 0.1 (step 7)",
            "  x: 0.0001 (step 7)"])

    def test_crash_keeps_scalars_already_printed(self):
        # Under a progress bar on stderr too.
        write(path(self.project, "crash.py"),
              "import sys\nsys.stderr.write('\\r 10%|#  ')\n"
              "print('step: 3')\nprint('loss: 0.5', flush=True)\n"
              "sys.stderr.write('\\r    \\rval: 0.25\\n\\r 20%|## ')\n"
              "raise SystemExit('diverged')\n")
        code, out = self.guild("run", "crash.py", "-y")
        self.assertNotEqual(code, 0, out)
        run = self.runs()[0]
        self.assertEqual(run.status, "error")
        self.assertEqual([r[:3] for r in run.scalar_history()],
                         [("loss", 0.5, 3), ("val", 0.25, 3)])

    # A progress bar as tqdm draws it on stderr: a carriage return and the
    # bar, no newline; tqdm.write clears it first, then redraws it.
    BAR_SCRIPT = (
        "import os, sys\n"
        "def bar(i):\n"
        "    sys.stderr.write('\\r%3d%%|%-4s| %d/4' % (25 * i, '#' * i, i))\n"
        "    sys.stderr.flush()\n"
        "def clear():\n"
        "    sys.stderr.write('\\r' + ' ' * 14 + '\\r')\n"
        "bar(0)\n"
        "for i in range(4):\n"
        "    print('step: %d' % i, flush=i % 2 == 0)\n"
        "    sys.stdout.write('loss: %s\\n' % (1 / (i + 1)))\n"
        "    bar(i + 1)\n"
        "clear(); sys.stderr.write('val: 0.5\\n'); bar(4)\n"
        "clear(); print('acc: 0.75'); bar(4)\n"
        "os.write(1, b'sub: 3\\n')  # as a subprocess writes\n"
        "if hasattr(os, 'fork'):  # a worker logs under the bar\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        sys.stderr.write('child: 2\\n')\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "sys.stderr.write('\\n')\n")

    @staticmethod
    def bar_output():
        """What BAR_SCRIPT writes, both streams, in order."""
        def bar(i):
            return "\r%3d%%|%-4s| %d/4" % (25 * i, "#" * i, i)
        clear = "\r" + " " * 14 + "\r"
        out = bar(0)
        for i in range(4):
            out += "step: %d\nloss: %s\n" % (i, 1 / (i + 1)) + bar(i + 1)
        out += clear + "val: 0.5\n" + bar(4) + clear + "acc: 0.75\n"
        out += bar(4) + "sub: 3\n"
        if hasattr(os, "fork"):
            out += "child: 2\n"
        return out + "\n"

    def test_a_progress_bar_on_stderr_eats_no_scalars(self):
        write(path(self.project, "bar.py"), self.BAR_SCRIPT)
        code, out = self.guild("run", "bar.py", "-y")
        self.assertEqual((code, out), (0, self.bar_output()))
        run = self.runs()[0]
        with open(run.guild_path("output"), newline="") as f:
            self.assertEqual(f.read(), self.bar_output())
        expected = [("loss", 1 / (i + 1), i) for i in range(4)] + [
            ("val", 0.5, 3), ("acc", 0.75, 3), ("sub", 3.0, 3)]
        if hasattr(os, "fork"):
            expected.append(("child", 2.0, 3))
        self.assertEqual([r[:3] for r in run.scalar_history()], expected)

    def test_a_real_tqdm_bar_and_tqdm_write(self):
        try:
            import tqdm
        except ImportError:
            tqdm = None
        require("tqdm", tqdm, "pip install tqdm")
        write(path(self.project, "tq.py"),
              "import sys\nfrom tqdm import tqdm\n"
              "for i in tqdm(range(3), mininterval=0):\n"
              "    print('step: %d' % i)\n"
              "    print('loss: %d' % (10 - i))\n"
              "    tqdm.write('acc: %d' % i)\n"
              "    tqdm.write('val: %d' % i, file=sys.stderr)\n")
        code, out = self.guild("run", "tq.py", "-y")
        self.assertEqual(code, 0, out)
        self.assertIn("3/3", out)
        self.assertEqual(
            [r[:3] for r in self.runs()[0].scalar_history()],
            [(key, float(val), i) for i in range(3) for key, val in (
                ("loss", 10 - i), ("acc", i), ("val", i))])

    def write_events_script(self, name, files, extra=""):
        """A script that writes files ({path: bytes}) in its run dir."""
        lines = ["import os"]
        for rel, data in sorted(files.items()):
            lines += ["os.makedirs(os.path.dirname(%r) or '.', exist_ok=True)"
                      % rel,
                      "open(%r, 'wb').write(bytes.fromhex(%r))"
                      % (rel, data.hex())]
        write(path(self.project, name), "\n".join(lines) + "\n" + extra)

    def test_event_file_scalars_in_runs_info_and_compare(self):
        self.write_events_script("tb.py", {
            "events.out.tfevents.1.h": tf_events((1, "acc", 0.5),
                                                 (2, "acc", 0.75)),
            "logs/train/events.out.tfevents.1.h": tf_events(
                (1, "loss", 2.0), (2, "loss", 1.0)),
            "logs/val/events.out.tfevents.1.h": tf_events(
                tf_event(2, tf_value("loss", 1.5, "content", "scalars"))),
            "runs/Nov22_host/events.out.tfevents.1.h.v2": tf_events(
                tf_event(3, tf_value("lr", 0.25, "float_val", "scalars"))),
        }, "print('printed: 3')\n")
        code, out = self.guild("run", "tb.py", "-y")
        self.assertEqual(code, 0, out)
        code, out = self.guild("runs", "info", "--scalar-stats")
        self.assertEqual(out.split("scalars:\n")[1].splitlines(), [
            "  acc: 0.75 (min 0.5, max 0.75, step 2, 2 values)",
            "  logs/train#loss: 1 (min 1, max 2, step 2, 2 values)",
            "  logs/val#loss: 1.5 (min 1.5, max 1.5, step 2, 1 values)",
            "  printed: 3 (min 3, max 3, step 0, 1 values)",
            "  runs/Nov22_host#lr: 0.25 (min 0.25, max 0.25, step 3, "
            "1 values)"])
        # A tag in one directory only is a column of its own name.
        code, out = self.guild("compare", "--csv", "-")
        self.assertEqual(out.splitlines()[0].split(",")[6:], [
            "step", "acc", "logs/train#loss", "logs/val#loss", "lr",
            "printed"])
        self.assertEqual(out.splitlines()[1].split(",")[7:],
                         ["0.75", "1.0", "1.5", "0.25", "3.0"])
        run = self.runs()[0]
        self.assertEqual(run.scalars()["runs/Nov22_host#lr"], 0.25)
        self.assertEqual(len(run.scalar_history()), 7)

    def test_event_files_are_read_incrementally(self):
        self.write_events_script("tb.py", {
            "events.out.tfevents.1.h": tf_events((1, "loss", 1.0))})
        code, out = self.guild("run", "tb.py", "-y")
        self.assertEqual(code, 0, out)
        run = self.runs()[0]
        target = path(run.dir, "events.out.tfevents.1.h")
        reads = []
        real_read = guild._read_event_file

        def counting_read(file_path, offset=0):
            reads.append(os.path.getsize(file_path) - offset)
            return real_read(file_path, offset)
        guild._read_event_file = counting_read
        self.addCleanup(setattr, guild, "_read_event_file", real_read)
        self.assertEqual(run.scalars(), {"loss": 1.0})
        self.assertEqual(reads, [])  # read when the run was listed
        more = guild._tfrecord(tf_event(2, tf_value("loss", 0.5)))
        with open(target, "ab") as f:
            f.write(more + more[:5])  # the writer is still writing
        self.assertEqual(run.scalars(), {"loss": 0.5})
        self.assertEqual(reads, [len(more) + 5])
        with open(target, "ab") as f:
            f.write(more[5:])
        stats = guild._run_scalar_stats(run.dir)[0]
        self.assertEqual(reads, [len(more) + 5, len(more)])
        self.assertEqual((stats["loss"]["count"], stats["loss"]["min"]),
                         (3, 0.5))
        # A file rewritten from scratch is read afresh.
        with open(target + ".tmp", "wb") as f:
            f.write(tf_events((1, "loss", 4.0)))
        os.replace(target + ".tmp", target)
        self.assertEqual(run.scalars(), {"loss": 4.0})

    def test_a_damaged_event_file_costs_only_its_scalars(self):
        good = tf_events((1, "a", 1.0), (2, "a", 2.0))
        damaged = bytearray(good)
        damaged[len(tf_events((1, "a", 1.0))) + 1] ^= 0xFF
        self.write_events_script("tb.py", {
            "good/events.out.tfevents.1.h": good,
            "bad/events.out.tfevents.1.h": bytes(damaged),
            "junk/events.out.tfevents.1.h": os.urandom(3000),
            "empty/events.out.tfevents.1.h": b""},
            "print('loss: 0.5')\n")
        code, out = self.guild("run", "tb.py", "-y")
        self.assertEqual(code, 0, out)
        # A damaged index (a cache) is rebuilt.
        write(self.runs()[0].guild_path("tfevents.json"), "{\"files\": [")
        code, out = self.guild("runs", "info")
        self.assertEqual(code, 0, out)
        scalars = out.split("scalars:\n")[1].splitlines()
        self.assertEqual(scalars[:3], ["  bad#a: 1 (step 1)",
                                       "  good#a: 2 (step 2)",
                                       "  loss: 0.5 (step 0)"])
        self.assertIn("  (bad/events.out.tfevents.1.h is damaged at byte",
                      scalars[3])
        self.assertEqual(len(scalars), 5)
        code, out = self.guild("runs")
        self.assertEqual((code, out.count("completed")), (0, 1), out)
        code, out = self.guild("compare", "--csv", "-")
        self.assertEqual(code, 0, out)
        self.assertIn("2.0", out)

    def test_a_script_logging_with_tensorboardx(self):
        try:
            import tensorboardX
        except ImportError:
            tensorboardX = None
        require("tensorboardx", tensorboardX, "pip install tensorboardX")
        write(path(self.project, "tbx.py"),
              "from tensorboardX import SummaryWriter\n"
              "writer = SummaryWriter()\n"
              "for step in range(3):\n"
              "    writer.add_scalar('loss', 1.0 / (step + 1), step)\n"
              "writer.add_histogram('weights', [1.0, 2.0, 3.0], 0)\n"
              "writer.add_text('note', 'hello', 0)\n"
              "writer.close()\n")
        code, out = self.guild("run", "tbx.py", "-y")
        self.assertEqual(code, 0, out)
        code, out = self.guild("runs", "info", "--scalar-stats")
        [line] = out.split("scalars:\n")[1].splitlines()
        self.assertRegex(line, r"^  runs/[^#]+#loss: 0.333333 \(min "
                         r"0.333333, max 1, step 2, 3 values\)$")
        code, out = self.guild("compare", "--csv", "-")
        self.assertEqual(out.splitlines()[1].split(",")[-1],
                         "0.3333333432674408")

    @unittest.skipIf(IS_WINDOWS, "POSIX signals")
    def test_ctrl_c_keeps_scalars_already_printed(self):
        # Under a progress bar on stderr too; its traceback is the
        # script's, as under plain python.
        write(path(self.project, "slow.py"),
              "import sys, time\nprint('loss: 0.5')\n"
              "sys.stderr.write('\\r 10%|#  ')\nprint('step: 1')\n"
              "sys.stderr.write('\\r    \\rval: 0.125\\n\\r 20%|## ')\n"
              "print('loss: 0.25', flush=True)\ntime.sleep(60)\n")
        p = self.start_guild("run", "slow.py", "-y", until=b"0.25")
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
        run = self.runs()[0]
        self.assertEqual(run.status, "terminated")
        # The traceback starts at the script, no guild frame above it.
        traceback = ("Traceback (most recent call last):\n  File \"%s\", "
                     "line 7, in <module>\n    time.sleep(60)\n"
                     "KeyboardInterrupt\n" % (
                         path(run.dir, "slow.py") if sys.version_info >=
                         (3, 9) else "slow.py"))
        self.assertTrue(p.stdout.read().decode().endswith(traceback))
        self.assertTrue(cat_file(run.guild_path("output")).endswith(
            traceback))
        self.assertEqual([r[:3] for r in run.scalar_history()],
                         [("loss", 0.5, 0), ("val", 0.125, 1),
                          ("loss", 0.25, 1)])
        self.assertEqual(run.scalars(), {"loss": 0.25, "val": 0.125})


@unittest.skipIf(IS_WINDOWS, "needs a pseudo-terminal")
class ProgressTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def run_in_pty(self, args, env=None):
        import pty
        master, slave = pty.openpty()
        p = subprocess.Popen(
            [sys.executable, GUILD_PY] + args, cwd=self.project,
            env=dict(os.environ, GUILD_HOME=self.home, **(env or {})),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        out, _ = p.communicate(timeout=60)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
        os.close(master)
        return out.decode(), err.decode()

    def test_batch_and_queue_progress_on_a_terminal(self):
        self.copy_sample("train.py")
        out, err = self.run_in_pty(["run", "train.py", "lr=[1,2,3]", "-y"])
        self.assertIn("[guild] trial 1/3, 0:00:00 elapsed", err)
        self.assertIn("[guild] trial 3/3", err)
        self.assertIn("\x1b[2m", err)
        self.assertNotIn("\x1b", out)
        self.guild("run", "train.py", "lr=[1,2]", "--stage-trials", "-y")
        out, err = self.run_in_pty(["run", "queue", "run-once=yes", "-y"],
                                   env={"NO_COLOR": "1"})
        self.assertIn("[guild] queue: 0 done, 2 staged", err)
        self.assertIn("[guild] queue: 1 done, 1 staged", err)
        self.assertNotIn("\x1b", err)

    def test_no_progress_when_not_a_terminal(self):
        self.copy_sample("train.py")
        code, out = self.guild("run", "train.py", "lr=[1,2]", "-y")
        self.assertNotIn("elapsed", out)
        self.assertNotIn("\x1b", out)


class TrashTest(GuildTestCase):
    @unittest.skipIf(IS_WINDOWS, "POSIX signals")
    def test_running_run_cannot_be_deleted(self):
        self.copy_sample("sleep.py")
        p = self.start_guild("run", "sleep.py", "-y")
        self.assertGuildError(self.guild("runs", "delete", "-y"),
                              "cannot delete running run")
        self.guild("stop", "-y")
        p.wait(timeout=30)
        self.assertEqual(self.guild("runs", "delete", "-y"),
                         (0, "Deleted 1 run(s)\n"))
        self.assertEqual(len(os.listdir(path(self.home, "trash", "runs"))),
                         1)

    def test_restored_staged_run_is_queued(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "--stage", "-y")
        self.guild("runs", "delete", "-y")
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertNotIn("Starting staged run", out)
        self.guild("runs", "restore", "-y")
        code, out = self.guild("run", "queue", "run-once=yes", "-y")
        self.assertIn("Starting staged run", out)

    def test_compare_csv_types(self):
        self.copy_sample("train.py")
        self.guild("run", "train.py", "fast=yes", "lr=0.5", "-y")
        code, out = self.guild("compare", "--csv", "-", "-cc",
                               "fast,lr,epochs,name,seed")
        self.assertEqual(out.splitlines()[1].split(",")[1:],
                         ["True", "0.5", "2", "base", ""])


class FourRunsTestCase(GuildTestCase):
    """Four staged runs of t.py, x=1 (the oldest) to x=4."""

    def setUp(self):
        super().setUp()
        for x in range(1, 5):  # run 1 (the newest) has x=4
            guild._init_run(path(self.home, "runs", guild.mkid()),
                            {"op": {"kind": "script", "name": "t.py"},
                             "flags": {"x": x}, "label": "x=%d" % x},
                            staged=True)

    def guild(self, *args):
        # In this process: these tests make dozens of calls, none of which
        # starts a script, and an interpreter start-up each cost seconds.
        return guild_main("-H", self.home, *args)

    def labels(self):
        return [r.get("label") for r in self.runs()]


class LabelTest(FourRunsTestCase):
    def test_no_run_labels_the_newest_only(self):
        # Guild AI's `label -s X -y` labels the latest run, never all.
        self.assertEqual(self.guild("label", "-s", "best", "-y"),
                         (0, "Labeled 1 run(s)\n"))
        self.assertEqual(self.labels(), ["best", "x=3", "x=2", "x=1"])
        self.guild("label", "-s", "old", "-Fl", "x=", "-y")
        self.assertEqual(self.labels(), ["best", "old", "x=2", "x=1"])

    def test_ranges_and_guild_options(self):
        self.guild("label", "2:3", "-p", "a", "-y")
        self.guild("label", ":", "--append", "z ${x} (${label})", "-y")
        self.assertEqual(self.labels(), [
            "x=4 z 4 (x=4)", "a x=3 z 3 (a x=3)", "a x=2 z 2 (a x=2)",
            "x=1 z 1 (x=1)"])
        self.guild("label", ":", "-rm", "a", "-rm", "z", "-y")
        self.assertEqual(self.labels()[1], "x=3 3 (a x=3)")
        self.guild("label", "1", "-c", "-y")
        self.assertEqual(self.labels()[0], "")
        self.assertGuildError(self.guild("label", "-s", "a", "-p", "b"),
                              "give one of --set")
        self.assertGuildError(self.guild("label", "0:", "-c", "-y"),
                              "indexes start at 1")


class TagCommentMarkTest(FourRunsTestCase):
    def test_tags_filter_and_show(self):
        self.assertEqual(self.guild("tag", "-a", "good", "-a", "new", "-y"),
                         (0, "Tagged 1 run(s)\n"))
        self.guild("tag", "2:3", "-a", "good", "-s", "-y")
        self.assertEqual(self.labels(), ["x=4", "good x=3", "good x=2",
                                         "x=1"])
        code, out = self.guild("runs", "-Ft", "good")
        self.assertEqual(len(out.splitlines()), 3)
        self.assertEqual(len(self.guild("runs", "-Ft", "new", "-Ft",
                                        "nope")[1].splitlines()), 1)
        self.assertIn("\ntags: good new\n", self.guild("runs", "info")[1])
        self.guild("tag", ":", "-d", "good", "-s", "-y")
        self.assertEqual(self.labels(), ["x=4", "x=3", "x=2", "x=1"])
        self.assertEqual(self.guild("tag", ":", "--list-all"),
                         (0, "new\n"))
        self.guild("tag", "-c", "-y")
        self.assertEqual(self.guild("runs", "-Ft", "new"), (0, ""))
        self.assertGuildError(self.guild("tag", "-y"), "give --add")

    def test_comments(self):
        self.guild("comment", "-a", "looks good", "-y")
        self.guild("comment", "-a", "second", "-u", "ann@box", "-y")
        code, out = self.guild("comment", "--list")
        self.assertRegex(out, r"^[0-9a-f]{8} \(t.py\):\n  \[1\] \S*@%s "
                         r"\d{4}-.*\n    looks good\n  \[2\] ann@box .*\n"
                         r"    second\n$" % re.escape(guild.HOST))
        self.assertEqual(len(self.guild("runs", "-Fc", "LOOKS")[1]
                             .splitlines()), 1)
        self.assertIn("comments:\n  [1] ", self.guild("runs", "info")[1])
        self.assertGuildError(self.guild("comment", "-d", "3", "-y"),
                              "has no comment 3 (it has 2)")
        self.guild("comment", "-d", "1", "-y")
        info = json.loads(self.guild("runs", "info", "--json")[1])
        self.assertEqual([(c["body"], c["user"], c["host"]) for c in
                          info["comments"]], [("second", "ann", "box")])
        self.guild("comment", "-c", "-y")
        self.assertEqual(self.guild("runs", "-Fc", "second"), (0, ""))
        self.assertGuildError(self.guild("comment", "-y"), "no editor")

    def test_mark(self):
        self.guild("mark", "-y")
        self.guild("mark", "-y")  # the newest unmarked: run 2
        self.guild("mark", "4", "-y")
        marked = lambda: self.guild("runs", "-Fm")[1].count("\n")
        self.assertEqual(marked(), 3)
        self.assertEqual(self.guild("runs", "-Fn")[1].count("\n"), 1)
        self.assertIn("\nmarked: yes\n", self.guild("runs", "info")[1])
        self.guild("mark", "-c", "1", "-y")
        self.assertEqual(marked(), 2)
        self.assertEqual(self.guild("mark", "--clear", "-y"),
                         (0, "Unmarked 2 run(s)\n"))
        self.assertEqual(marked(), 0)
        self.assertGuildError(self.guild("runs", "-Fm", "-Fn"),
                              "not allowed with")

    def test_runs_json_and_listing_options(self):
        self.guild("tag", "-a", "t1", "-y")
        listing = json.loads(self.guild("runs", "--json")[1])
        self.assertEqual([r["flags"] for r in listing],
                         [{"x": 4}, {"x": 3}, {"x": 2}, {"x": 1}])
        self.assertEqual(sorted(listing[0]), sorted([
            "id", "operation", "status", "label", "tags", "marked",
            "created", "started", "stopped", "exit_status", "batch",
            "run_dir", "flags", "scalars", "step"]))
        self.assertEqual((listing[0]["tags"], listing[0]["status"],
                          listing[0]["started"]), (["t1"], "staged", None))
        self.assertEqual(json.loads(self.guild("runs", "list", "--json",
                                               "-Ft", "t1")[1]),
                         listing[:1])
        info = json.loads(self.guild("runs", "info", "2", "--json")[1])
        self.assertEqual((info["id"], info["flags"], info["scalars"],
                          info["marked"]),
                         (listing[1]["id"], {"x": 3}, {}, False))
        code, out = self.guild("runs", "-v", "--limit", "1")
        self.assertRegex(out, r"^\[1:\w+\] .*\n  id: \w+\n  operation: "
                         r"t.py\n")
        self.assertIn("Showing the first 1 runs (4 total)", out)
        self.assertEqual(self.guild("runs", "-n", "1", "-m")[1].count(
            "\n"), 4)
        # Guild AI's combined status filters
        self.assertEqual(self.guild("runs", "-Sst")[1].count("\n"), 4)
        self.assertEqual(self.guild("runs", "-Sct"), (0, ""))


class CompareSelectTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def setUp(self):
        super().setUp()
        shutil.copy(sample("projects", "sweep", "fit.py"), self.project)
        write(path(self.project, "sys.py"),
              "print('sys/gpu: 3')\nprint('loss: 9')\n")
        self.guild("run", "fit.py", "lr=[0.1,0.3]", "epochs=2", "-y")
        self.guild("run", "fit.py", "lr=0.2", "epochs=3", "-y")

    def csv(self, *args):
        code, out = self.guild("compare", "--csv", "-", *args)
        self.assertEqual(code, 0, out)
        return [line.split(",") for line in out.splitlines()]

    @any_start_mode
    def test_default_columns_leave_out_batch_runs(self):
        rows = self.csv()
        self.assertEqual(rows[0], ["run", "operation", "started", "time",
                                   "status", "label", "epochs", "lr",
                                   "step", "acc", "loss"])
        self.assertEqual([r[1] for r in rows[1:]], ["fit.py"] * 3)
        self.assertEqual([r[8] for r in rows[1:]], ["3", "2", "2"])
        self.assertEqual(len(self.csv("--include-batch")), 5)

    @any_start_mode
    def test_column_specs(self):
        rows = self.csv("-c", "min loss as best, =lr as rate, .exit_status,"
                        "first loss step, count acc, =lr")
        self.assertEqual(rows[0][11:], ["best", "rate", "exit_status",
                                        "first loss step", "count acc"])
        self.assertEqual(rows[1][11:], ["0.1111", "0.2", "0", "1", "3"])
        rows = self.csv("-cc", "lr,max acc as top,loss step", "--max", "lr")
        self.assertEqual([r[1:] for r in rows], [
            ["lr", "top", "loss step"], ["0.3", "0.9375", "2"],
            ["0.2", "0.9445", "3"], ["0.1", "0.875", "2"]])
        self.assertEqual(self.csv("-r", "-cc", "lr")[0], ["run", "lr"])
        self.assertEqual(self.csv("--skip-core")[0], [
            "run", "epochs", "lr", "step", "acc", "loss"])
        self.assertEqual(self.csv("-u", "-r", "1:2")[0], [
            "run", "epochs", "lr", "step", "acc", "loss"])
        self.assertEqual(self.csv("-u", "-r", "2:3")[0], [
            "run", "lr", "acc", "loss"])
        self.assertGuildError(self.guild("compare", "-c", "min"),
                              "unknown column 'min'")
        self.assertGuildError(self.guild("compare", "-c", ".nope"),
                              "unknown attribute '.nope'")
        self.assertGuildError(self.guild("compare", "-c", "a b c"),
                              "invalid column spec 'a b c'")
        self.assertGuildError(self.guild("compare", "-c", "lr", "-cc",
                                         "lr"), "cannot be used together")
        self.assertGuildError(self.guild("compare", "--min", "nope"),
                              "unknown column 'nope'")

    @any_start_mode
    def test_system_scalars_hidden_unless_all_scalars(self):
        self.guild("run", "sys.py", "-y")
        # Event files' sys/ tags too, in a directory or several.
        run_dir = self.runs()[0].dir
        for rel in ("events.out.tfevents.1.h", "a/events.out.tfevents.1.h",
                    "b/events.out.tfevents.1.h"):
            os.makedirs(os.path.dirname(path(run_dir, rel)), exist_ok=True)
            with open(path(run_dir, rel), "wb") as f:
                f.write(tf_events((1, "sys/mem", 5.0), (1, "acc", 0.5)))
        self.assertEqual([c for c in self.csv()[0] if "sys/" in c], [])
        self.assertEqual([c for c in self.csv("-s", "1")[0] if "sys/" in c],
                         ["a#sys/mem", "b#sys/mem", "sys/gpu", "sys/mem"])
        self.assertEqual(self.csv("-t", "-cc", "sys/gpu", "1")[1][1], "3.0")

    @any_start_mode
    def test_select(self):
        by_lr = {r.flags.get("lr"): r for r in self.runs()}
        newest = self.runs()[0]
        self.assertEqual(self.guild("select"), (0, newest.id + "\n"))
        self.assertEqual(self.guild("select", "--min", "loss")[1],
                         by_lr[0.2].id + "\n")
        self.assertEqual(self.guild("select", "--max", "loss", "-s")[1],
                         by_lr[0.1].short_id + "\n")
        self.assertEqual(self.guild("select", "--min", "loss", "-A")[1]
                         .split(), [by_lr[lr].id for lr in (0.2, 0.3, 0.1)])
        self.assertEqual(self.guild("select", "-min", "max acc", "-p")[1],
                         by_lr[0.1].dir + "\n")
        self.assertEqual(self.guild("select", "--max", "=lr", "-a",
                                    "label")[1], "epochs=2 lr=0.3\n")
        self.assertEqual(self.guild("select", "-Fo", "+", "-a",
                                    "operation"), (0, "fit.py+\n"))
        self.assertEqual(self.guild("select", "1", "-a", "flags")[1],
                         "epochs: 3\nlr: 0.2\n")
        self.assertGuildError(self.guild("select", "1", "-a", "nosuch"),
                              "no such run attribute 'nosuch'")
        self.assertGuildError(self.guild("select", "1:2"),
                              "1:2 match 2 runs")
        self.assertGuildError(self.guild("select", "-Fo", "nope"),
                              "no matching runs")
        self.assertGuildError(self.guild("select", "-Fo", "fit.py+",
                                         "--min", "loss"),
                              "no run has a value for 'loss'")
        self.assertGuildError(self.guild("select", "--min", "loss",
                                         "--max", "loss"), "not allowed")


# ---------------------------------------------------------------------------
# 15. The web view
# ---------------------------------------------------------------------------


class PageParser(html.parser.HTMLParser):
    """An HTML page as the tests read it: every element's tag, attributes
    and text (its own and its children's)."""

    def __init__(self, text):
        super().__init__()
        self.elements = []
        self._open = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        element = {"tag": tag, "attrs": dict(attrs), "text": ""}
        self.elements.append(element)
        if tag not in ("input", "meta", "br", "img", "rect", "line",
                       "circle"):
            self._open.append(element)

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()["tag"] == tag:
                break

    def handle_data(self, data):
        for element in self._open:
            element["text"] += data

    def find(self, tag, **attrs):
        """Elements with tag whose attributes include attrs (data_run is
        data-run; a name ending in _ matches a prefix: id_="run-")."""
        def match(e):
            for name, val in attrs.items():
                have = e["attrs"].get(name.rstrip("_").replace("_", "-"))
                if have is None or (have != val if not name.endswith("_")
                                    else not have.startswith(val)):
                    return False
            return True
        return [e for e in self.elements if e["tag"] == tag and match(e)]

    def cells(self, row):
        """The th and td elements of row (a tr element)."""
        found = []
        for e in self.elements[self.elements.index(row) + 1:]:
            if e["tag"] in ("tr", "table"):
                break
            if e["tag"] in ("th", "td"):
                found.append(e)
        return found

    def text_of(self, row, cls):
        """Text of the cell of class cls in row (a tr element)."""
        for e in self.cells(row):
            if cls in e["attrs"].get("class", "").split():
                return e["text"]
        return None


class ViewTest(GuildTestCase):
    """The view server in a thread, read with urllib as a browser would."""

    store = None  # made once, copied for each test

    @classmethod
    def setUpClass(cls):
        cls.store = tempfile.mkdtemp(prefix="guild-test-")
        shutil.copy(sample("projects", "sweep", "fit.py"), cls.store)
        guild_cmd(["run", "fit.py", "lr=[0.1,0.3]", "epochs=3", "-q", "-y"],
                  cwd=cls.store, guild_home=path(cls.store, "home"))
        corrupt = path(cls.store, "home", "runs", "c0" * 16, ".guild")
        os.makedirs(corrupt)
        write(path(corrupt, "run.json"), "{not json")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.store)

    def setUp(self):
        super().setUp()
        shutil.rmtree(self.home)
        shutil.copytree(path(self.store, "home"), self.home, symlinks=True)
        self.corrupt_id = "c0" * 16
        self.url = self.serve(guild._View(path(self.home, "runs")))
        self.summaries = [x for x in guild.run_summaries(path(
            self.home, "runs")) if x["id"] != self.corrupt_id]
        self.trials = [x for x in self.summaries if x["kind"] == "script"]

    def serve(self, view):
        server = guild._view_server(view, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever,
                                  kwargs={"poll_interval": 0.05})
        thread.start()
        self.addCleanup(server.server_close)
        self.addCleanup(thread.join)
        self.addCleanup(server.shutdown)
        return "http://127.0.0.1:%d" % server.server_address[1]

    def get(self, target, method="GET", headers=None):
        """(status, content type, body text) of a request to target."""
        req = urllib.request.Request(self.url + target, method=method,
                                     headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.headers["Content-Type"], r.read().decode()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.headers["Content-Type"], e.read().decode()

    def page(self, target):
        status, ctype, body = self.get(target)
        self.assertEqual((status, ctype), (200, "text/html; charset=utf-8"),
                         body)
        return PageParser(body)

    def api(self, target):
        status, ctype, body = self.get(target)
        self.assertEqual((status, ctype), (200, "application/json"), body)
        return json.loads(body)

    def test_runs_page_lists_every_run_with_links_and_live_refresh(self):
        page = self.page("/")
        rows = page.find("tr", id_="run-")
        self.assertEqual([r["attrs"]["id"][4:] for r in rows],
                         [x["id"] for x in self.summaries] +
                         [self.corrupt_id])
        for row, x in zip(rows, self.summaries):
            self.assertEqual(page.text_of(row, "status"), x["status"])
            self.assertEqual(page.text_of(row, "operation"), x["op"])
            self.assertEqual(page.text_of(row, "flags"),
                             guild.format_flags(x["flags"]))
        self.assertEqual(page.text_of(rows[-1], "status"), "corrupt")
        links = {a["attrs"]["href"] for a in page.find("a")}
        self.assertTrue({"/runs/" + x["id"] for x in self.summaries}
                        <= links)
        boxes = page.find("input", type="checkbox", name="runs")
        self.assertEqual(len(boxes), 4)
        self.assertEqual(page.find("form", action="/compare")[0]["attrs"]
                         ["method"], "get")
        self.assertIn("refreshRuns", page.find("script")[0]["text"])

    def test_runs_page_filters_sorts_and_pages(self):
        page = self.page("/?op=%2B")
        self.assertEqual([r["attrs"]["id"] for r in page.find("tr", id_="run-")],
                         ["run-" + x["id"] for x in self.summaries
                          if x["kind"] == "batch"])
        page = self.page("/?status=error")
        self.assertEqual(page.find("tr", id_="run-"), [])
        losses = sorted(x["scalars"]["loss"] for x in self.trials)
        data = self.api("/api/runs?sort=loss&desc=1")
        self.assertEqual([r["scalars"].get("loss") for r in data["runs"]],
                         losses[::-1] + [None, None])
        page = self.page("/?limit=1&offset=1")
        self.assertEqual(len(page.find("tr", id_="run-")), 1)
        self.assertEqual(len(page.find("a", rel="prev")), 1)
        self.assertEqual(len(page.find("a", rel="next")), 1)
        self.assertEqual(self.api("/api/runs?limit=2&offset=3")["total"], 4)

    def test_run_page_shows_attributes_scalars_plots_output_and_files(self):
        trial = self.trials[0]
        run_dir = path(self.home, "runs", trial["id"])
        page = self.page("/runs/" + trial["id"][:8])
        status = page.find("td", id="status")[0]
        self.assertEqual(status["text"], "completed")
        stats = guild.scalar_stats(guild.read_scalars(run_dir))
        scalar_rows = [[c["text"] for c in page.cells(row)]
                       for row in page.find("tr")]
        scalar_rows = [r for r in scalar_rows if r[0] in stats]
        self.assertEqual(len(scalar_rows), len(stats))
        for key, last, low, high, step, count in scalar_rows:
            self.assertEqual((float(low), float(high)),
                             (stats[key]["min"], stats[key]["max"]))
            self.assertEqual(float(last), stats[key]["last"])
            self.assertEqual(int(count), stats[key]["count"])
        series = page.find("polyline", data_run=trial["id"])
        self.assertEqual(len(series), len(stats))
        for line in series:
            self.assertEqual(int(line["attrs"]["data-count"]), 3)
            xs = [float(p.split(",")[0])
                  for p in line["attrs"]["points"].split()]
            self.assertEqual(xs, sorted(xs))
            self.assertEqual(len(xs), 3)
        with open(path(run_dir, ".guild", "output")) as f:
            self.assertEqual(page.find("pre", id="output")[0]["text"],
                             f.read())
        link = "/runs/%s/files/fit.py" % trial["id"]
        self.assertTrue(page.find("a", href=link))
        status, ctype, body = self.get(link)
        with open(path(run_dir, "fit.py")) as f:
            self.assertEqual((status, ctype, body),
                             (200, "text/plain; charset=utf-8", f.read()))
        self.assertEqual(page.find("script"), [])  # it is not running
        log_page = self.page("/runs/%s?log=1" % trial["id"])
        self.assertEqual(len(log_page.find("polyline")), len(stats))

    def test_batch_run_page_links_its_trials(self):
        batch = [x for x in self.summaries if x["kind"] == "batch"][0]
        page = self.page("/runs/" + batch["id"])
        compare = [a["attrs"]["href"] for a in page.find("a")
                   if a["attrs"]["href"].startswith("/compare?")][0]
        self.assertEqual(sorted(compare.split("=")[1].split(",")),
                         sorted(x["id"][:8] for x in self.trials))
        self.assertEqual(sorted(self.api("/api/runs/" + batch["id"])
                                ["trials"]),
                         sorted(x["id"] for x in self.trials))

    def test_compare_page_and_csv_are_compares(self):
        ids = ",".join(x["id"][:8] for x in self.trials)
        status, ctype, body = self.get("/compare.csv?runs=" + ids)
        code, out = self.guild("compare", "--csv", "-",
                               *[x["id"] for x in self.trials])
        self.assertEqual((status, body), (200, out))
        data = self.api("/api/compare?runs=" + ids)
        self.assertEqual(data["columns"], out.splitlines()[0].split(","))
        page = self.page("/compare?runs=%s&runs=%s" % tuple(
            x["id"] for x in self.trials))
        rows = page.find("table", **{"class": "compare"})[0]
        self.assertIn(self.trials[0]["id"][:8], rows["text"])
        # All runs: as `guild compare`, batch runs left out by default.
        code, out = self.guild("compare", "--csv", "-")
        self.assertEqual(self.get("/compare.csv")[2], out)
        batch = [x for x in self.summaries if x["kind"] == "batch"][0]
        self.assertNotIn(batch["id"][:8], out)
        legend = page.find("p", **{"class": "legend"})[0]["text"]
        for x in self.trials:
            self.assertIn("%s lr=%s" % (x["id"][:8], x["flags"]["lr"]),
                          legend)
        for key in ("loss", "acc"):
            figure = page.find("figure", data_key=key)
            self.assertEqual(len(figure), 1)
        lines = page.find("polyline")
        self.assertEqual(sorted(e["attrs"]["data-run"] for e in lines),
                         sorted([x["id"] for x in self.trials] * 2))
        points = page.find("circle", data_run_=self.trials[0]["id"][:8])
        self.assertEqual(len(points), 1)
        self.assertTrue(page.find("figure", data_flag="lr"))

    def test_json_endpoints_read_the_store(self):
        data = self.api("/api/runs")
        self.assertEqual(data["total"], 4)
        self.assertEqual([r["id"] for r in data["runs"][:3]],
                         [x["id"] for x in self.summaries])
        trial = self.trials[0]
        run_dir = path(self.home, "runs", trial["id"])
        info = self.api("/api/runs/" + trial["id"])
        self.assertEqual(info["flags"], trial["flags"])
        self.assertEqual(info["attributes"]["status"], "completed")
        self.assertEqual([f["path"] for f in info["files"]], ["fit.py"])
        with open(path(run_dir, ".guild", "output")) as f:
            text = f.read()
        out = self.api("/api/runs/%s/output?offset=5" % trial["id"])
        self.assertEqual((out["text"], out["offset"], out["status"]),
                         (text[5:], len(text), "completed"))
        scalars = self.api("/api/scalars?runs=" + trial["id"])
        self.assertEqual(
            scalars["runs"][trial["id"]]["loss"],
            [[step, val, ts] for key, val, step, ts in
             guild.read_scalars(run_dir) if key == "loss"])
        self.assertEqual(self.api("/api/runs/" + self.corrupt_id),
                         {"id": self.corrupt_id, "status": "corrupt"})

    def test_corrupt_run_shows_as_one_and_breaks_nothing(self):
        odd = path(self.home, "runs", "d0" * 16, ".guild")
        os.makedirs(odd)
        write(path(odd, "run.json"), json.dumps({"flags": [1, 2],
                                                 "label": 3}))
        page = self.page("/")
        self.assertEqual(len(page.find("tr", id_="run-")), 5)
        for run_id in (self.corrupt_id, "d0" * 16):
            row = page.find("tr", id="run-" + run_id)[0]
            self.assertEqual(page.text_of(row, "status"), "corrupt")
            self.assertIn("corrupted", self.get("/runs/" + run_id)[2])
        self.page("/compare")
        self.assertEqual(self.get("/compare.csv")[0], 200)

    def test_paths_outside_a_run_are_refused(self):
        trial = self.trials[0]["id"]
        run_dir = path(self.home, "runs", trial)
        secret = path(self.home, "secret.txt")
        write(secret, "secret")
        os.symlink(secret, path(run_dir, "out-link"))
        os.symlink(path(run_dir, "fit.py"), path(run_dir, "in-link"))
        os.makedirs(path(run_dir, "sub"))
        write(path(run_dir, "sub", "a.txt"), "a")
        self.assertEqual(self.get("/runs/%s/files/sub/a.txt" % trial)[:3:2],
                         (200, "a"))
        self.assertEqual(self.get("/runs/%s/files/in-link" % trial)[0], 200)
        bad = ["/runs/%s/files/out-link", "/runs/%s/files/../../secret.txt",
               "/runs/%s/files/%%2e%%2e/%%2e%%2e/secret.txt",
               "/runs/%s/files/..%%2F..%%2Fsecret.txt",
               "/runs/%s/files/..%%5C..%%5Csecret.txt",
               "/runs/%s/files/%%2F" + secret.lstrip("/").replace("/", "%%2F"),
               "/runs/%s/files//" + secret.lstrip("/"),
               "/runs/%s/files/sub", "/runs/%s/files/.", "/runs/%s/files/",
               "/runs/%s/files/sub/../../../secret.txt",
               "/runs/%s/files/%%00", "/runs/%s/../../secret.txt"]
        for url in bad:
            status, _ctype, body = self.get(url % trial)
            self.assertEqual(status, 404, url)
            self.assertNotIn("secret", body.replace("secret.txt", ""))
            self.assertNotIn("Traceback", body)
        for url in ["/runs/..", "/runs/%2e%2e/files/secret.txt",
                    "/runs/" + self.home, "/nowhere", "/api/nowhere",
                    "/runs/ffff", "/runs/%s/files" % trial, "/api/runs/x/y"]:
            self.assertEqual(self.get(url)[0], 404, url)
        for url in ["/?offset=x", "/?status=done", "/?started=someday"]:
            status, _ctype, body = self.get(url)
            self.assertEqual(status, 400, url)
            self.assertNotIn("Traceback", body)

    def test_read_only_and_loopback_hosts_only(self):
        before = sorted(os.listdir(path(self.home, "runs")))
        for method in ("POST", "PUT", "DELETE"):
            self.assertEqual(self.get("/runs/" + self.trials[0]["id"],
                                      method=method)[0], 501)
        self.assertEqual(sorted(os.listdir(path(self.home, "runs"))), before)
        self.assertEqual(self.get("/", headers={"Host": "evil.example"})[0],
                         403)
        self.assertEqual(self.get("/", headers={"Host": "localhost:1"})[0],
                         200)
        self.assertEqual(self.get("/", method="HEAD")[:2],
                         (200, "text/html; charset=utf-8"))

    def test_view_filters_and_runs_narrow_what_is_served(self):
        trial = self.trials[0]
        url = self.serve(guild._View(path(self.home, "runs"),
                                     only={trial["id"]}))
        with urllib.request.urlopen(url + "/api/runs") as r:
            self.assertEqual([x["id"] for x in json.load(r)["runs"]],
                             [trial["id"]])
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/runs/" + self.trials[1]["id"])
        e.exception.close()
        self.assertEqual(e.exception.code, 404)

    def test_svg_chart_skips_what_it_cannot_draw_and_thins_long_curves(self):
        nan, inf = float("nan"), float("inf")
        svg = guild._svg_chart([{"run": "r", "name": "r", "color": "#000",
                                 "points": [(0, 1.0), (1, nan), (2, inf),
                                            (3, 0.0), (4, 0.1)]}],
                               "step", log_y=True)
        self.assertIn('data-count="2"', svg)
        self.assertIn("no values", guild._svg_chart(
            [{"run": "r", "name": "r", "color": "#000", "points": []}],
            "step"))
        points = [(i, (i * 7919) % 1000) for i in range(10000)]
        kept = guild._thin(points)
        self.assertLessEqual(len(kept), 2 * guild.VIEW_PLOT_SIZE[0])
        self.assertEqual((min(p[1] for p in kept), max(p[1] for p in kept)),
                         (0, 999))
        self.assertEqual(kept, sorted(kept))


class ViewCommandTest(GuildTestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def start_view(self, *args):
        p = subprocess.Popen(
            [sys.executable, GUILD_PY, "view", "-n"] + list(args),
            cwd=self.project, env=dict(os.environ, GUILD_HOME=self.home),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.addCleanup(p.stdout.close)
        self.addCleanup(p.wait)
        self.addCleanup(p.terminate)
        lines = []
        while True:
            line = p.stdout.readline().decode()
            lines.append(line)
            if "http://" in line or not line:
                break
        self.assertIn("Guild View at http://", "".join(lines))
        return p, lines, line.split()[3]

    def test_view_serves_until_stopped_and_warns_off_loopback(self):
        _p, _lines, url = self.start_view()
        self.assertTrue(url.startswith("http://127.0.0.1:"))
        with urllib.request.urlopen(url + "api/runs") as r:
            self.assertEqual(json.load(r)["total"], 0)
        port = url.rsplit(":", 1)[1].strip("/")
        self.assertGuildError(self.guild("view", "-n", "-p", port),
                              "cannot serve on 127.0.0.1:%s" % port)
        p, lines, url = self.start_view("--host", "0.0.0.0")
        self.assertIn("serving on 0.0.0.0: anyone", "".join(lines))
        p.send_signal(signal.SIGINT)
        self.assertEqual(p.wait(timeout=30), 0)

    def test_finished_run_shows_its_status_on_the_next_poll(self):
        write(path(self.project, "wait.py"),
              "import os, time\nprint('loss: 1', flush=True)\n"
              "while not os.path.exists('go'):\n    time.sleep(0.01)\n"
              "print('loss: 0.5')\n")
        p = self.start_guild("run", "wait.py", "-y", until=b"loss")
        run = self.runs()[0]
        _v, _lines, url = self.start_view()
        with urllib.request.urlopen(url + "runs/" + run.id) as r:
            page = PageParser(r.read().decode())
        self.assertEqual(page.find("td", id="status")[0]["text"], "running")
        self.assertIn("followRun", page.find("script")[0]["text"])
        with urllib.request.urlopen(url) as r:
            page = PageParser(r.read().decode())
        row = page.find("tr", id="run-" + run.id)[0]
        self.assertEqual(page.text_of(row, "status"), "running")
        write(path(run.dir, "go"), "")
        p.wait(timeout=60)
        with urllib.request.urlopen(url) as r:  # the page's poll
            page = PageParser(r.read().decode())
        row = page.find("tr", id="run-" + run.id)[0]
        self.assertEqual(page.text_of(row, "status"), "completed")
        self.assertEqual(page.text_of(row, "scalars"), "loss=0.5")
        with urllib.request.urlopen(url + "api/runs/%s/output?offset=0"
                                    % run.id) as r:
            out = json.load(r)
        self.assertEqual((out["status"], out["text"]),
                         ("completed", "loss: 1\nloss: 0.5\n"))



class ViewBrowserTest(GuildTestCase):
    """The pages in a real browser (headless Chromium): what it renders
    after running their scripts, and a screenshot."""

    def test_runs_and_compare_pages_render_in_a_browser(self):
        sys.path.insert(0, sample("testing"))
        self.addCleanup(sys.path.remove, sample("testing"))
        import browser
        found = browser.find_browser()
        require("browser", found, browser.INSTALL)
        browser.make_store(self.home, self.project, lrs=(0.01, 0.1))
        summaries = guild.run_summaries(path(self.home, "runs"))
        trials = [x["id"] for x in summaries if x["batch"]]
        with browser.ViewServer(self.home) as view:
            page = PageParser(browser.dump_dom(found, view.url + "/",
                                               wait_ms=5000))
            rows = page.find("tr", id_="run-")
            self.assertEqual([r["attrs"]["id"][4:] for r in rows],
                             [x["id"] for x in summaries])
            self.assertEqual({page.text_of(r, "status") for r in rows},
                             {"completed"})
            # the rows were refreshed by the page's poll, in the browser
            self.assertRegex(page.find("span", id="updated")[0]["text"],
                             "^updated ")
            target = "/compare?runs=" + ",".join(trials)
            page = PageParser(browser.dump_dom(found, view.url + target))
            self.assertEqual(
                sorted(e["attrs"]["data-run"]
                       for e in page.find("polyline")),
                sorted(trials * 2))  # loss and acc, a line per run
            png = path(mkdtemp(), "compare.png")
            browser.screenshot(found, view.url + target, png, 1000, 700)
            self.assertEqual(browser.png_size(png), (1000, 700))
            self.assertGreater(os.path.getsize(png), 10000)

@unittest.skipIf(IS_WINDOWS, "a fake tensorboard program as a script")
class TensorBoardCommandTest(GuildTestCase):
    """guild tensorboard with a fake `tensorboard` on PATH that copies
    the log dir it is given (links followed) and exits."""

    def setUp(self):
        super().setUp()
        self.bin = mkdtemp()
        self.copy = path(mkdtemp(), "logdir")
        write(path(self.bin, "tensorboard"), (
            "#!%s\nimport shutil, sys\n"
            "args = sys.argv[1:]\n"
            "shutil.copytree(args[args.index('--logdir') + 1], %r)\n"
            "print('fake tensorboard', ' '.join(args[2:]))\n"
            "sys.exit(int(%r))\n") % (sys.executable, self.copy, "0"))
        os.chmod(path(self.bin, "tensorboard"), 0o755)
        self.copy_sample("fit.py", project="sweep")
        write(path(self.project, "logs.py"), (
            "import os, sys\nsys.path.insert(0, %r)\nimport guild\n"
            "os.makedirs('logs')\n"
            "with open('logs/events.out.tfevents.1.host', 'wb') as f:\n"
            "    f.write(guild._event_records([('train/loss', 0.5, 1, 1)]))"
            "\n") % ROOT)

    def tensorboard(self, *args, path_env=None):
        return self.guild("tensorboard", "-n", "--reload-interval", "0.05",
                          *args, env={"PATH": path_env or self.bin + os.pathsep
                                      + os.environ["PATH"]})

    def test_log_dir_holds_printed_scalars_and_event_files(self):
        self.guild("run", "fit.py", "lr=[0.1,0.3]", "epochs=2", "-q", "-y")
        self.guild("run", "logs.py", "-q", "-y")
        code, out = self.tensorboard()
        self.assertEqual(code, 0, out)
        self.assertIn("with 3 run(s)", out)
        self.assertRegex(out, r"fake tensorboard --host 127.0.0.1 --port \d+")
        names = sorted(os.listdir(self.copy))
        runs = {run.short_id: run for run in self.runs()}
        self.assertEqual(len(names), 3)  # the batch is left out
        for name in names:
            run = runs[name.split()[0]]
            self.assertEqual(name, ("%s %s %s" % (
                run.short_id, run.op_desc, run.get("label"))).strip())
            if run.op_desc == "logs.py":
                self.assertEqual(guild._read_event_file(path(
                    self.copy, name, "logs", "events.out.tfevents.1.host"))
                    [0], [("train/loss", 0.5, 1, 1)])
                continue
            printed = guild._read_event_file(path(
                self.copy, name, "events.out.tfevents.0.guild-printed"))[0]
            self.assertEqual([r[:3] for r in printed], [
                r[:3] for r in guild.read_scalars(run.dir)])
        for args, shown in [((), 2), (("--include-batch",), 3)]:
            shutil.rmtree(self.copy)
            code, out = self.tensorboard("-Fo", "fit", *args)
            self.assertIn("with %d run(s)" % shown, out)

    def test_sync_adds_what_runs_print_later(self):
        self.guild("run", "fit.py", "epochs=1", "-q", "-y")
        run = self.runs()[0]
        logdir = mkdtemp()
        mirror = guild._TensorBoardLogdir(logdir, [run])
        mirror.sync()
        printed = path(logdir, os.listdir(logdir)[0],
                       "events.out.tfevents.0.guild-printed")
        before = guild._read_event_file(printed)[0]
        with open(run.guild_path("scalars"), "a") as f:
            f.write(json.dumps(["loss", 0.125, 9, 5]) + "\n")
        mirror.sync()
        mirror.sync()
        self.assertEqual(guild._read_event_file(printed)[0],
                         before + [("loss", 0.125, 9, 5)])

    def test_missing_or_failing_tensorboard_is_a_clear_error(self):
        write(path(self.bin, "tensorboard"), "#!/bin/sh\nexit 3\n")
        self.assertGuildError(self.tensorboard(),
                              "tensorboard exited with status 3")
        import importlib.util
        if importlib.util.find_spec("tensorboard") is None:
            self.assertGuildError(self.tensorboard(path_env=mkdtemp()),
                                  "tensorboard is not installed: pip "
                                  "install tensorboard")

# ---------------------------------------------------------------------------
# Bad input, through the command line and the API
# ---------------------------------------------------------------------------


ARGS_SCRIPT = """\
import argparse
p = argparse.ArgumentParser()
p.add_argument("--msg", default="hi")
print(p.parse_args().msg)
"""
LR_SCRIPT = "lr = 0.1\nprint('loss: %s' % lr)\n"


class BadInputTest(GuildTestCase):
    """A corpus of bad input: each case is refused with a clear error (no
    traceback), creates no run, and leaves a store that still lists and
    runs."""
    starts_scripts = True  # also run in the fresh-interpreter pass

    SYMLINK = "link"  # a symlink in the run to a file outside it

    # (argv, files to write, exit code, message fragment); RUN stands for
    # the id of the run in the store.
    CASES = [
        (["run", "ok.py", "x=range[1:100000000]", "-m", "2", "-y"], {}, 1,
         "100000000 values, more than the 100000 a list may hold"),
        (["run", "ok.py", "x=range[1:1000]", "lr=range[1:1000]",
          "--force-flags", "-y"], {}, 2, "1000000 trials, more than 100000"),
        (["run", "ok.py", "x=logspace[-5:400:5]", "-y"], {}, 1,
         "its values are out of range"),
        (["run", "ok.py", "x=[1:1e400]", "-y"], {}, 1,
         "1e400 is out of range"),
        (["run", "ok.py", "x=linspace[0:1:1000000000]", "-y"], {}, 1,
         "more than the 100000"),
        (["run", "ok.py", "x=[1:5]", "-m", "1000000000", "-y"], {}, 2,
         "more than 100000: sample fewer"),
        (["run", "ok.py", "x=[]", "-y"], {}, 1, "the batch has no trials"),
        (["run", "ok.py", "x=" + "1" * 5000, "-y"], {}, 1,
         "too many digits"),
        (["cat", "-p", "/etc/hostname", "RUN"], {}, 1,
         "'/etc/hostname' is not a path inside run"),
        (["cat", "-p", "../../x", "RUN"], {}, 1, "is not a path inside run"),
        (["cat", "-p", SYMLINK, "RUN"], {}, 1, "is not a path inside run"),
        (["ls", "-p", "/etc", "RUN"], {}, 1,
         "'/etc' is not a path inside run"),
        (["ls", "-p", "../..", "RUN"], {}, 1, "is not a path inside run"),
        (["ls", "-p", SYMLINK, "RUN"], {}, 1, "is not a path inside run"),
        (["diff", "-p", "/etc/hostname", "RUN", "RUN"], {}, 1,
         "'/etc/hostname' is not a path inside run"),
        (["diff", "-p", "../../x", "RUN", "RUN"], {}, 1,
         "is not a path inside run"),
        (["diff", "-p", SYMLINK, "--cmd", "cat", "RUN", "RUN"], {}, 1,
         "is not a path inside run"),
        (["run", "ok.py", "--stage", "--start", "RUN", "-y"], {}, 2,
         "an operation ('ok.py') cannot be used with --start"),
        (["run", "--start", "RUN", "--stage", "-y"], {}, 2,
         "--stage cannot be used with --start"),
        (["run", "--restart", "RUN", "-m", "2", "-y"], {}, 2,
         "--max-trials cannot be used with --restart"),
        (["run", "--start", "RUN", "--restart", "RUN", "-y"], {}, 2,
         "use --start or --restart, not both"),
        (["run", "ok.py", "@empty.csv", "-y"], {"empty.csv": "x\n"}, 1,
         "batch file 'empty.csv' lists no trials"),
        (["run", "ok.py", "@empty.json", "-y"], {"empty.json": "[]"}, 1,
         "batch file 'empty.json' lists no trials"),
        (["run", "ok.py", "@nul.json", "-y"],
         {"nul.json": '[{"x": "a\\u0000b"}]'}, 1, "a NUL byte is not allowed"),
        (["run", "ok.py", "@sur.json", "-y"],
         {"sur.json": '[{"x": "a\\ud800b"}]'}, 1, "not valid Unicode text"),
        (["run", "ok.py", "@name.json", "--force-flags", "-y"],
         {"name.json": '[{"a b": 1}]'}, 1, "invalid flag name 'a b'"),
        (["run", "args.py", "msg=a\0b", "-y"], {}, 1,
         "a NUL byte is not allowed"),
        (["run", "args.py", "msg=a\udcffb", "-y"], {}, 1,
         "not valid Unicode text"),
        (["run", "ok.py", "--gpus", "0\0", "-y"], {}, 1,
         "a NUL byte is not allowed"),
    ]

    def setUp(self):
        super().setUp()
        write(path(self.project, "ok.py"), OK_SCRIPT)
        write(path(self.project, "args.py"), ARGS_SCRIPT)
        write(path(self.project, "lr.py"), LR_SCRIPT)
        self.chdir(self.project)

    def test_bad_input_corpus(self):
        self.assertEqual(guild_main("run", "ok.py", "-y")[0], 0)
        run = guild.list_runs()[0]
        os.symlink("/etc/hostname", path(run.dir, self.SYMLINK))
        for argv, files, exit_code, message in self.CASES:
            with self.subTest(argv=argv):
                for name, text in files.items():
                    write(path(self.project, name), text)
                argv = [run.id if a == "RUN" else a for a in argv]
                code, out = guild_main(*argv)
                self.assertEqual(code, exit_code, out)
                self.assertIn("guild: ", out)
                self.assertIn(message, out)
                self.assertNotIn("Traceback", out)
                self.assertEqual(len(guild.list_runs()), 1)
        code, out = self.guild("run", "ok.py", "x=[2,3]", "-y")
        self.assertEqual(code, 0, out)
        self.assertEqual({r.status for r in guild.list_runs()},
                         {"completed"})

    @any_start_mode
    def test_diff_refuses_source_names_that_leave_the_run(self):
        self.assertEqual(guild_main("run", "ok.py", "-y")[0], 0)
        run = guild.list_runs()[0]
        attrs = guild._read_dict(run.guild_path("run.json"))
        attrs["sourcecode"] = ["ok.py", "../../../../../../etc/hostname"]
        guild._write_json(run.guild_path("run.json"), attrs)
        for options in ((), ("--cmd", "cat")):
            self.assertGuildError(
                guild_main("diff", "-s", run.id, run.id, *options),
                "'../../../../../../etc/hostname' is not a path inside")

    def test_huge_grids_are_sampled_lazily(self):
        code, out = guild_main("run", "ok.py", "x=range[1:50000]",
                               "lr=range[1:50000]", "--force-flags", "-m",
                               "3", "--random-seed", "1", "--print-trials")
        self.assertEqual(code, 0, out)
        self.assertEqual(len(out.splitlines()), 4, out)

    def test_api_raises_guild_errors_for_bad_arguments(self):
        for call, error, message in (
                (lambda: guild.run_op("ok.py", flags="x=2"), guild.UsageError,
                 "flags must be dict, not 'x=2'"),
                (lambda: guild.run_attrs("lr.py", {"lr": 10 ** 5000}),
                 guild.FlagError, "too many digits"),
                (lambda: guild.run_attrs("ok.py", {"x": "[1,2]"},
                                         max_trials="2"),
                 guild.UsageError, "max_trials must be int"),
                (lambda: guild.run_attrs("ok.py", {1: 2}), guild.FlagError,
                 "invalid flag name 1"),
                (lambda: guild.runs(batch="deadbeef"), guild.RunError,
                 "could not find a run matching 'deadbeef'"),
                (lambda: guild.runs(status="bogus"), guild.UsageError,
                 "unknown status 'bogus'")):
            with self.assertRaises(error) as ctx:
                call()
            self.assertIn(message, str(ctx.exception))
        self.assertEqual(guild.list_runs(), [])


# ---------------------------------------------------------------------------
# 15-16. API and packaging
# ---------------------------------------------------------------------------


class PackagingTest(unittest.TestCase):
    starts_scripts = True  # also run in the fresh-interpreter pass

    def test_copied_file_alone_runs_with_isolated_python(self):
        d = mkdtemp()
        self.addCleanup(_cleanup_temp_dirs)
        shutil.copy(GUILD_PY, d)
        write(path(d, "hello.py"), "msg = 'hi'\nprint(msg)\n")
        env = {"GUILD_HOME": path(d, "home"), "PATH": os.environ["PATH"]}
        if IS_WINDOWS:
            env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", "")
        out = subprocess.run(
            [sys.executable, "-I", "guild.py", "run", "hello.py", "msg=yo",
             "-y"], cwd=d, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, check=False)
        self.assertEqual(out.stdout.decode(), "yo\n")
        self.assertEqual(out.returncode, 0)

    def test_namespaces(self):
        from guild import batch_util, lock, op_util, run
        import guild.batch_util
        self.assertIs(guild.batch_util, batch_util)
        self.assertIs(batch_util.init_trial_run, guild.init_trial_run)
        self.assertIs(op_util.set_run_pending, guild.set_run_pending)
        self.assertIs(lock.Lock, guild.Lock)
        self.assertEqual(lock.RUN_STATUS, "run-status")
        self.assertRegex(run.mkid(), "^[0-9a-f]{32}$")

    def test_public_names_documented(self):
        for name in guild.__all__:
            self.assertTrue(getattr(guild, name).__doc__, name)

    def test_main_returns_exit_code(self):
        with SetGuildHome(mkdtemp()):
            self.addCleanup(_cleanup_temp_dirs)
            err = io.StringIO()
            saved = sys.stderr
            sys.stderr = err
            try:
                self.assertEqual(guild.main(["runs", "info"]), 1)
            finally:
                sys.stderr = saved
        self.assertIn("guild: could not find a run matching '1'",
                      err.getvalue())


# ---------------------------------------------------------------------------
# Doctest files
# ---------------------------------------------------------------------------


def _doctest_files():
    found = []
    for root, _dirs, files in os.walk(SAMPLES):
        found += [path(root, f) for f in files if f.endswith(".md")]
    return sorted(found)


def _starts_scripts(suite):
    """The tests of suite whose class has starts_scripts set, less those
    marked @any_start_mode."""
    kept = unittest.TestSuite()
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            kept.addTests(_starts_scripts(test))
        elif getattr(getattr(test, getattr(test, "_testMethodName", ""),
                             None), "starts_scripts",
                     getattr(test, "starts_scripts", False)):
            kept.addTest(test)
    return kept


def load_tests(loader, tests, pattern):
    # GUILD_TEST_SCRIPTS_ONLY=1: the pass in which scripts start in fresh
    # interpreters reruns only what that changes, and the doctests.
    if os.environ.get("GUILD_TEST_SCRIPTS_ONLY"):
        tests = _starts_scripts(tests)
    for filename in _doctest_files():
        tests.addTest(doctest.DocFileSuite(
            filename, module_relative=False, globs=dict(DOCTEST_GLOBS),
            optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
            tearDown=lambda _test: _cleanup_temp_dirs()))
    return tests


def _default_home_state():
    """~/.guild's top-level mtime, or None: the tests must not touch it."""
    try:
        return os.stat(os.path.join(os.path.expanduser("~"),
                                    ".guild")).st_mtime_ns
    except OSError:
        return None


def _main():
    """Run the tests; end with a `N passed, N failed` line for CI."""
    home_before = _default_home_state()
    # A suite started in the background inherits SIGINT ignored, and so
    # would every guild it starts: the Ctrl-C tests need it delivered.
    if (hasattr(signal, "SIGINT")
            and signal.getsignal(signal.SIGINT) == signal.SIG_IGN):
        signal.signal(signal.SIGINT, signal.default_int_handler)
    prog = unittest.main(module=__name__, exit=False)
    result = prog.result
    failed = len(result.failures) + len(result.errors) + len(
        getattr(result, "unexpectedSuccesses", []))
    passed = result.testsRun - failed - len(result.skipped)
    print("test_guild: %d passed, %d failed, %d skipped"
          % (passed, failed, len(result.skipped)))
    if _default_home_state() != home_before:
        print("test_guild: the tests wrote in ~/.guild; they must write "
              "only in temporary directories")
        return 1
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(_main())
