"""The cache on disk: its layout, stamps, locks, safe file operations, hashing and housekeeping."""
