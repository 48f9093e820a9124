"""Bridges to other tools (LangChain). Each module imports its tool only when used."""
