"""Meta-training of the architecture and weight prior over few-shot glyph classification tasks."""
