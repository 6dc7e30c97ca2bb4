"""The live console: its HTTP, SSE and WebSocket server, its sampler and its hooks."""
