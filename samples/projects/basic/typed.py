"""An argparse script with typed flags."""

import argparse

p = argparse.ArgumentParser()
p.add_argument("--lr", type=float, default=0.1, help="learning rate")
p.add_argument("--epochs", type=int, default=2)
p.add_argument("--name", default="x")
p.add_argument("--opt", choices=["sgd", "adam"], default="sgd")
p.add_argument("--no-shuffle", dest="shuffle", action="store_false")
args = p.parse_args()
print(sorted(vars(args).items()))
