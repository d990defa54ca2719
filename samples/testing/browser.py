"""A headless Chromium for the view's tests, and the README's screenshots.

    python3 samples/testing/browser.py    # remake samples/docs/view-*.png

The tests load pages of `guild view` in a real browser: it runs the pages'
JavaScript, and dumps the DOM it ends with or takes a screenshot. Chromium
is started so that it never reaches for the network (no updates, sync or
field trials) with a new, empty profile each time.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import guild  # noqa: E402  (the file under test, from this checkout)

BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser",
            "google-chrome", "headless_shell")
INSTALL = "apt-get install chromium-headless-shell (or chromium)"
SCREENSHOTS = os.path.join(ROOT, "samples", "docs")
CURVES = os.path.join(ROOT, "samples", "projects", "curves")


def find_browser():
    """The path of a Chromium on PATH, or None."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def run_browser(browser, url, *args, timeout=120):
    """Run the browser headless on url with args; return its stdout."""
    profile = tempfile.mkdtemp(prefix="guild-browser-")
    try:
        p = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-quic", "--no-first-run",
             "--disable-background-networking",
             "--disable-component-update", "--disable-sync",
             "--disable-field-trial-config", "--hide-scrollbars",
             "--user-data-dir=" + profile] + list(args) + [url],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            timeout=timeout, check=True)
        return p.stdout.decode("utf-8", "replace")
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def dump_dom(browser, url, wait_ms=0):
    """The DOM after the page loaded and its scripts ran for wait_ms of
    virtual time (a poll every 2 s: 5000 sees two)."""
    args = ["--dump-dom"]
    if wait_ms:
        args.append("--virtual-time-budget=%d" % wait_ms)
    return run_browser(browser, url, *args)


def screenshot(browser, url, png, width=1200, height=800):
    """Write a PNG of the page at url, width x height pixels."""
    run_browser(browser, url, "--screenshot=" + png,
                "--window-size=%d,%d" % (width, height))


def png_size(png):
    """(width, height) of a PNG file, from its header."""
    with open(png, "rb") as f:
        head = f.read(24)
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("%s is not a PNG" % png)
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24],
                                                              "big")


def make_store(home, project, lrs=(0.01, 0.03, 0.1)):
    """A store of realistic runs: a sweep of samples/projects/curves'
    train.py over lrs, and one more run with a label."""
    shutil.copy(os.path.join(CURVES, "train.py"), project)
    env = dict(os.environ, GUILD_HOME=home)
    guild_py = os.path.join(ROOT, "guild.py")
    subprocess.run([sys.executable, guild_py, "run", "train.py",
                    "lr=[%s]" % ",".join(str(lr) for lr in lrs), "-q", "-y"],
                   cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run([sys.executable, guild_py, "run", "train.py", "lr=0.2",
                    "epochs=20", "-l", "short run", "-q", "-y"],
                   cwd=project, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class ViewServer:
    """guild view of home's runs, served from a thread (a with block)."""

    def __init__(self, home):
        self.server = guild._view_server(
            guild._View(os.path.join(home, "runs")), "127.0.0.1", 0)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        kwargs={"poll_interval": 0.05})

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_exc):
        self.server.shutdown()
        self._thread.join()
        self.server.server_close()


def make_screenshots(browser, dest=SCREENSHOTS):
    """The README's screenshots of each page, from a new sample store."""
    tmp = tempfile.mkdtemp(prefix="guild-screenshots-")
    try:
        home, project = os.path.join(tmp, "home"), os.path.join(tmp, "p")
        os.makedirs(project)
        make_store(home, project)
        summaries = guild.run_summaries(os.path.join(home, "runs"))
        trials = [x["id"] for x in summaries if x["batch"]]
        shots = [("view-runs.png", "/", 560),
                 ("view-run.png", "/runs/" + trials[0], 1400),
                 ("view-compare.png", "/compare?runs=" + ",".join(
                     t[:8] for t in trials), 1250)]
        with ViewServer(home) as view:
            for name, target, height in shots:
                screenshot(browser, view.url + target,
                           os.path.join(dest, name), 1200, height)
                print("wrote", os.path.join(dest, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    found = find_browser()
    if not found:
        sys.exit("no browser: " + INSTALL)
    make_screenshots(found)
