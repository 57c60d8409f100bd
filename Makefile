# The two commands a newcomer needs (README): `make run` and `make test`.
.PHONY: setup run test test-faults test-extended unit lint bench images clean-cache web

setup:
	@scripts/setup.sh

run: setup
	@scripts/demo.sh

# Unit tests, lint and types, then integration tests that boot real VMs (images cached in ~/.cache/corral).
test: setup
	.venv/bin/ruff check corral tests bench scripts
	.venv/bin/mypy
	.venv/bin/python -m pytest tests/unit -q
	.venv/bin/python scripts/prepare_images.py tiny debian-12 tiny@aarch64 tiny@riscv64
	.venv/bin/python -m pytest tests/integration tests/faults -m 'not soak and not extended' -q -n 2 --dist loadgroup --durations=15

# The whole fault and load suite (tests/faults): make test runs its quick part; this adds the long runs (soak).
test-faults: setup
	.venv/bin/python scripts/prepare_images.py tiny
	.venv/bin/python -m pytest tests/faults -q -n 2 --dist loadgroup

# Long checks make test covers another way (debian-12 booted by hand, without Corral: test_debian12_vm boots it
# through Corral and checks the same and more).
test-extended: setup
	.venv/bin/python scripts/prepare_images.py tiny debian-12
	.venv/bin/python -m pytest tests/integration -m extended -q -n 2

# The web page (docs/explanation/web.md): web/ built into corral/web/static, which is committed (CI needs no npm).
web:
	cd web && npm ci --no-audit --no-fund && npm run build

unit: setup
	.venv/bin/python -m pytest tests/unit -q

bench: setup
	.venv/bin/python -m bench.run

clean-cache:
	rm -rf $${CORRAL_CACHE:-$$HOME/.cache/corral}
