"""The shipped YAML configs, installed as package data ``metaspeech.configs`` (see metaspeech/shipped_configs.py)."""
