"""Print a message: the sample script the batch docs use."""

import argparse

parser = argparse.ArgumentParser()
parser.add_argument("--msg", default="hello")
parser.add_argument("--loud", action="store_true")
args = parser.parse_args()

print(args.msg.upper() + "!" if args.loud else args.msg)
