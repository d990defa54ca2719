"""Print a line, then sleep: a run to stop or kill."""

import time

seconds = 60.0

print("sleeping", flush=True)
time.sleep(seconds)
print("woke")
