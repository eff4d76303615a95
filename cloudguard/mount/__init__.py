"""The mounted vault (issue 12): plaintext only in memory, through the same engine."""
