"""rltool: reinforcement-learning post-training of language models."""
