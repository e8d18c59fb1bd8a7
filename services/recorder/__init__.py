"""mushu recorder service (built in a later issue)."""
