"""One repository module per table family: every SQL statement on those tables."""
