"""Exit with a chosen exit status."""

import sys

code = 3

print("failing with %i" % code)
sys.exit(code)
