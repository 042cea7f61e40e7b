"""The shipped YAML configs, installed as package data ``metaspeech.configs`` (see metaspeech/cli/shipped_configs.py)."""
