"""``python -m fgad.bench.gpucheck``: see :mod:`fgad.bench.gpucheck.main`."""

from fgad.bench.gpucheck.main import main

main()
