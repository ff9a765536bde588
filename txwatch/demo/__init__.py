"""`txwatch demo`: a small GPT-style model trained on CPU in a few deliberately flawed ways."""
