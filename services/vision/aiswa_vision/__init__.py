"""The vision service: ranked improvement roadmaps built from analysis findings."""
