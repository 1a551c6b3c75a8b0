"""Test-only reference implementations (the ``dev`` extra), imported by the tests that use them.

Each getter returns the module, or skips the calling test with a reason where it is not installed, so a
missing reference skips the tests that compare against it and nothing else. The getters hide themselves
from tracebacks: a skip is reported at the test's line that asked for the reference.
"""

from __future__ import annotations

from types import ModuleType

import pytest

DEV_EXTRA = "pip install 'fgad[dev]'"


def scipy_ndimage() -> ModuleType:
    """``scipy.ndimage``: the reference Gaussian filter, interpolation and region labelling."""
    __tracebackhide__ = True
    return pytest.importorskip("scipy.ndimage", reason=f"the reference values need scipy: {DEV_EXTRA}")


def sklearn_metrics() -> ModuleType:
    """``sklearn.metrics``: the reference ROC AUC and precision-recall curve."""
    __tracebackhide__ = True
    return pytest.importorskip("sklearn.metrics", reason=f"the reference values need scikit-learn: {DEV_EXTRA}")
