"""Speed, memory and load measurements, printed as JSON lines and never asserted on.

Each is a module run from the repository root, `python -m benchmarks.<name> [--tiny]`; `--tiny`
(or a small run) is the same code on tiny models, which the tests run.
"""
