"""The torch-free edge runtime: backends, few-shot search, fusion, post-processing, Detector, sources, overlays."""
