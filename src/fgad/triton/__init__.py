"""fgad on NVIDIA Triton Inference Server: a model repository written from bundles, and a client.

* :mod:`fgad.triton.repository`: :func:`write_repository` (``fgad-triton``), the python and ensemble forms;
* :mod:`fgad.triton.model_config`, :mod:`fgad.triton.pbtxt`: each model's ``config.pbtxt``;
* :mod:`fgad.triton.python_model`: ``TritonPythonModel``, the fixed code every generated ``model.py`` imports;
* :mod:`fgad.triton.served`: what that model checks and runs (parameters, integrity, the runtime's Detector);
* :mod:`fgad.triton.client`: :class:`Client`, ``fgad-run``'s results from a remote server
  (needs ``pip install 'fgad[triton]'``).

Torch-free, like the runtime it serves; tritonclient is imported only by the client. docs/fleet.md.
"""
