"""Encoders (transformers classes built from config) and the loss heads objectives share."""
