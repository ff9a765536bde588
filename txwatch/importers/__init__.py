"""Importers: other tools' training logs as txwatch runs, so the rules can say what they would have caught."""
