"""TNMStaging library: AJCC 8th-edition rules (core), image features and the staging classifier."""
