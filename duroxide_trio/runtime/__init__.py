"""The runtime: dispatchers that fetch work from a provider, replay turns and run activities."""
