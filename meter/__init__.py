"""Usage metering: the agent-to-server meter protocol (see docs/METER_PROTOCOL.md)."""
