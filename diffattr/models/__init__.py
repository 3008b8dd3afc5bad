"""Model families behind one interface (METHODS.md §3)."""
