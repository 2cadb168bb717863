"""What the tests and the benchmarks share: models built in code with random weights (tiny ones,
SD1.5-size ones, annotator weights, a safety checker, a single-file checkpoint) in the layouts
MODELS_DIR holds, the app started in its own process, and a counter of host transfers.

Nothing here is part of the app, and nothing here downloads: every model is built in code so that
tests and benchmarks run offline. Importing the package imports nothing heavy; each module imports
torch, diffusers or transformers itself when it needs them.
"""
