"""The command line: the console script, LightningCLI, commands, comparisons and side-by-side runs."""
