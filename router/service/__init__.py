"""Process model: the supervisor, its DNS workers, and shared routing tables."""
