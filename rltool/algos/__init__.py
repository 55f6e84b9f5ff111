"""Algorithms as registries of small pure functions: advantages, policy losses, KL estimators."""
