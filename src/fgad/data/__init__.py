"""Datasets in the MVTec/VisA layout, synthetic data, description banks (banks/) and caption records (captions/)."""
