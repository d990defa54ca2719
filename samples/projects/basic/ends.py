"""End as asked, showing what a script's process does on the way out:
the sample for how guild.py starts and ends a script."""

import atexit
import logging
import sys
import threading
import time

end = "normally"  # or: raise, exit, interrupt


def worker():
    time.sleep(0.1)
    print("thread done")


print("name=%s argv=%s" % (__name__, sys.argv))
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
logging.info("logged")
atexit.register(print, "atexit ran")
threading.Thread(target=worker).start()
if end == "raise":
    raise ValueError("boom")
if end == "exit":
    sys.exit("bad thing")
if end == "interrupt":
    raise KeyboardInterrupt
