"""The diagnosis benchmark's scenario corpus: real small trainings that go wrong in one known way, or stay
healthy while setting a trap, each declaring its ground truth (see README.md beside this file)."""
