"""Model families behind one interface (docs/methods.md §3)."""
