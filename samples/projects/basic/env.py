"""Print what a run sees of its environment."""

import os

for name in ("RUN_DIR", "RUN_ID", "CUDA_VISIBLE_DEVICES"):
    print("%s=%s" % (name, os.environ.get(name, "")))
print("cwd=%s" % os.getcwd())
