"""Usage metering: meters, deduplicated usage events and their hourly rollups."""
