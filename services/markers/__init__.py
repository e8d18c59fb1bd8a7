"""mushu markers service (built in a later issue)."""
