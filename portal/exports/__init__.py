"""The export airlock: what may leave the platform, and the checks every file goes through."""
