"""Event and command contracts, one module per producer. Each model carries its `type` and
`version`; a topic's readers parse with the discriminated union named next to its models."""
