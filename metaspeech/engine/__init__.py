"""The meta-learning engine: fast weights, task batches, inner loops, the plugin base class; nothing about speech."""
