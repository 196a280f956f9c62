"""pretrain-bench: pre-train BERT-style encoders and compare objectives under a fixed budget."""

__version__ = "0.1.0"
