"""Load generation and BoN-vs-tuned comparison reports."""
