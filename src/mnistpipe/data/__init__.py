"""Data: fetching from mirrors (fetch), IDX parsing (idx), prepared tensors (prepared)."""
