"""Where the agents are: hooks for Claude Code, Codex and Gemini CLI, and an MCP server.

All of them sit on top of the socket API (the agents' client), never around it.
"""
