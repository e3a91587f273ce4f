"""The simulation: JSE-listed companies through the real services, proved by an oracle."""
