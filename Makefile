PYTHON ?= python3

.PHONY: test bench stress lint

# Everything: unit tests and the doctest files under samples/, with scripts
# forked (Linux); then again, with scripts started in fresh interpreters (as
# on macOS and Windows), the tests that start scripts and the doctests.
test:
	$(PYTHON) test_guild.py
	GUILD_NO_FORK=1 GUILD_TEST_SCRIPTS_ONLY=1 $(PYTHON) test_guild.py

# Performance workloads against their targets (see README).
bench:
	$(PYTHON) samples/bench/bench.py
	$(PYTHON) samples/bench/tpe_bench.py

# The kill storm (queues and trials killed at random), a minute in each
# start mode; the seed is printed (GUILD_STRESS_SEED=N repeats a storm).
stress:
	$(PYTHON) samples/stress/stress.py

# Python 3.8 compatibility (needs `pip install vermin`).
lint:
	vermin -t=3.8- --no-tips guild.py test_guild.py
