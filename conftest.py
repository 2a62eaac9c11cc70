# Makes the repo root importable in tests (tasks.py, the turbo package, tests.* helpers).
