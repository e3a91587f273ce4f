"""Contracts and plumbing shared by the cloudwallet services."""
