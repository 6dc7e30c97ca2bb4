"""What is generated from the schemas and parsers: protocol docs, CLI docs, the dissector."""
