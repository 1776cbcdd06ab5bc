"""NLQ: natural language queries (VSLNet, ReLER) trained with NaQ."""
