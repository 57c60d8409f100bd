"""The fault and load suite: every operation killed at each of its fault points (corral.faults) and at random
moments, power loss while guests write, API fuzzing, and concurrent load. `make test` runs everything here not
marked ``soak``; `make test-faults` runs it all. The figures it measures are published in docs/reliability.md.

The fixtures of tests/conftest.py apply here too: each test has its own Corral home and daemon, and every QEMU it
started is killed by pid when it ends."""
