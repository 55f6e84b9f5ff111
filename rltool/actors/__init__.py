"""Actors: model and tokenizer loading, the embedded offline default, (later) encoder agents."""
