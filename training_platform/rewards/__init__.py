"""Reward functions for RL training: the built-in ones and the check of user reward files."""
