"""Downstream evaluation: GLUE/CLUE task loaders, their metrics and the GLUE-sane fine-tuning recipe.

`cli.py` stays light (argparse only) so that `pretrain-bench --help` does not import torch.
"""
