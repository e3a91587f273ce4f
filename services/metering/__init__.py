"""Metering: hourly usage per VM from vCenter's events, in event time."""
