"""The comparison study: objectives pre-trained at equal budget, fine-tuned with one recipe, reported
side by side against a random-init floor. `cli.py` stays light (argparse only)."""
