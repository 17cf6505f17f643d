"""LocalMIM Studio's torch engine: model.py (the pretraining model), data.py (seeded order, crops, masks),
checkpoint.py (the app's checkpoint format), loop.py (the one training loop), cli.py (train.py's command line)."""
