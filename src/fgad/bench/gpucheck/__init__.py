"""``make gpu-check``: the whole GPU half of fgad proven in one command on a lent GPU machine.

One call of ``python -u -m fgad.bench.gpucheck`` (see :mod:`fgad.bench.gpucheck.main`) installs the carried
wheels into a target folder, builds the CUDA deformable kernels for the present GPU, runs their GPU tests,
times them against the project's PyTorch op and ``torchvision.ops.deform_conv2d``, times the torch few-shot
search against the numpy reference, measures the fp16 distance of the export graph from fp32, and runs
``fgad-bench`` on CUDA, every step in its own process under a timeout, all within one time budget. Results:
at most :data:`~fgad.bench.gpucheck.results.MAX_OUT_FILES` files in ``$OUT`` and a summary table on stdout;
the exit status is non-zero on any correctness failure or incomplete step. ``--dry`` runs the same steps
on the CPU with the CUDA parts skipped (and says which), so the suite exercises the whole path.
"""
