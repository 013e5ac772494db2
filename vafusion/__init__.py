"""vafusion: valence/arousal from face and voice."""
