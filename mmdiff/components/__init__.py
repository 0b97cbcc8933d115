"""Reusable parts any floor may use: autoencoders, text encoders, tokenizers, weight converters."""
