"""Turning media and visual prompts into model inputs."""
