"""INT8 by explicit quantization: calibration images of normal parts -> a Q/DQ ONNX graph / int8 bundle.

* :mod:`fgad.calibration.images`: calibration images, preprocessed like the runtime; onnxruntime data reader;
* :mod:`fgad.calibration.families`: the node families INT8 is decided for;
* :mod:`fgad.calibration.qdq`: :func:`quantize_qdq` (onnxruntime static quantization, TensorRT's Q/DQ rules);
* :mod:`fgad.calibration.sensitivity`: the measurement that decides which families stay float;
* :mod:`fgad.calibration.bundle`: :func:`quantize_bundle`, an fp32 bundle -> an int8 bundle (``fgad-calibrate``).

Importing this package is cheap (numpy); onnx and onnxruntime's quantization tools are imported when used
(``pip install 'fgad[export]'``). Nothing here imports torch. See docs/int8.md.
"""

from fgad.calibration.bundle import MIN_CALIBRATION_IMAGES, calibration_paths, quantize_bundle
from fgad.calibration.images import (
    ImageCalibrationReader,
    list_calibration_images,
    preprocess_images,
    read_calibration_images,
)
from fgad.calibration.qdq import (
    DEFAULT_KEEP_FLOAT,
    QUANT_METHODS,
    KeepFloat,
    QuantizationError,
    QuantizationReport,
    quantize_qdq,
)

__all__ = [
    "DEFAULT_KEEP_FLOAT",
    "MIN_CALIBRATION_IMAGES",
    "QUANT_METHODS",
    "ImageCalibrationReader",
    "KeepFloat",
    "QuantizationError",
    "QuantizationReport",
    "calibration_paths",
    "list_calibration_images",
    "preprocess_images",
    "quantize_bundle",
    "quantize_qdq",
    "read_calibration_images",
]
