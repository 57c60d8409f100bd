# The two commands a newcomer needs (README): `make run` and `make test`.
.PHONY: setup run test unit lint bench images clean-cache

setup:
	@scripts/setup.sh

run: setup
	@scripts/demo.sh

# Unit tests, lint and types, then integration tests that boot real VMs (images cached in ~/.cache/corral).
test: setup
	.venv/bin/ruff check corral tests bench scripts
	.venv/bin/mypy
	.venv/bin/python -m pytest tests/unit -q
	.venv/bin/python scripts/prepare_images.py tiny debian-12
	.venv/bin/python -m pytest tests/integration -q -n 2 --dist loadgroup

unit: setup
	.venv/bin/python -m pytest tests/unit -q

bench: setup
	.venv/bin/python -m bench.run

clean-cache:
	rm -rf $${CORRAL_CACHE:-$$HOME/.cache/corral}
