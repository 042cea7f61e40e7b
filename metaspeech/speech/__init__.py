"""The speech front end: audio, features, text, tokenizer, CTC and losses, augmentation, precision probes."""
