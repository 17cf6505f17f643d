"""LocalMIM Studio's torch engine: model.py (the pretraining model), data.py (seeded order, crops, masks),
checkpoint.py (the app's checkpoint format), loop.py (the one training loop and its pretraining job), finetune.py (its
fine-tuning job and MAE's LARS probe), augment.py (fine-tuning's RandAugment and random erasing), cli.py (train.py's
command line)."""
