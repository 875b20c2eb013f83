"""One home per payment provider: its client, its formats, its signatures."""
